"""``descore reward import-official``: turn an official DeScore checkpoint into a merged DeScore checkpoint.

What the official code (WYuan1001/DeScore_project_page at b7d6a0b, a mirror of KlingAIResearch/DeScore) saves,
per ``cold_start/trainer_qwen3.py`` (``_save``, ``_save_checkpoint``), ``cold_start/train_reward.py`` and
``dual_rl/verl/workers/fsdp_workers_head.py`` (``save_checkpoint``); the head format follows ``inference.py``::

    stage 1, checkpoint-N/
        lora_adapter/adapter_config.json      r, lora_alpha (written as 128 whatever the run used), target_modules
        lora_adapter/adapter_model.safetensors  LoRA A/B of the LLM projections, peft names
                                                (base_model.model.model.language_model.layers.*.q_proj.lora_A.weight)
        non_lora_state_dict.pth               every other trained tensor: the vision tower with its mergers, the
                                              whole embed_tokens (only its <Reward> row trained), rm_head.weight
        rm_head.pth                           {"rm_head.weight": (1, H)} or {"base_model.model.rm_head.weight": ...}
        config.json, model.safetensors, tokenizer/processor files
                                              the base with the trained non-LoRA tensors but *without* the LoRA
                                              deltas, and the tokenizer with <Reward>
    stage 2, global_step_N/actor/
        huggingface/                          the full weights once verl's model merger has written them, with
                                              the tokenizer with <Reward>
        rm_head.pth                           {"model": {"rm_head.weight": (1, H)}}

Stage 1 is rebuilt the way the official code builds it: the base, ``<Reward>`` added as a special token and the
embedding resized to ``len(tokenizer)``, the non-LoRA tensors loaded, the LoRA merged (peft, scale alpha / r
from ``adapter_config.json``). ``--base`` may also be the ``checkpoint-N`` folder itself, whose weights already
hold the trained non-LoRA tensors and whose tokenizer has ``<Reward>``; ``--non_lora`` is then optional. Stage 2
is already a full model. Either way the result is written as an export (:meth:`DeScoreModel.export_merged`):
plain HF backbone, ``reward_head.safetensors`` (float32), manifest, and ``descore_export.json`` naming every
imported file with its sha256.

Every tensor name is checked both ways (missing and unexpected names are listed) and every shape; ``.pth``
files are read with ``torch.load(weights_only=True)`` only (:mod:`reward.upstream_weights`). What the manifest
says the official code leaves implicit: the CoT placement (default ``assistant``: where stage 2, which trains
the released head, puts the CoT; the released ``inference.py`` uses the user turn), the VideoSpec (each
stage's training settings unless flags say otherwise) and the judge template (the official wording is not
part of the kit; pass your copy with ``--template``). docs/descore_import.md walks through it.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import torch
from torch import nn

from .checkpoint import resolve_model_source, weights_fingerprint
from .errors import CheckpointError, ConfigError
from .jobs import check_export_target
from .modeling import REWARD_TOKEN, DeScoreModel, add_reward_token, load_plain_backbone, pixel_factor
from .prompts import JUDGE_TEMPLATE, read_judge_template
from .run_record import code_commit, file_sha256, library_versions
from .upstream_weights import PEFT_PREFIX, copy_checked, load_pickle_safely, load_tensors, merge_lora, split_lora
from .video import VideoSpec

logger = logging.getLogger(__name__)

Stage = Literal["cold_start", "dual_rl"]
HEAD_KEYS = ("rm_head.weight", PEFT_PREFIX + "rm_head.weight")
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
# Per stage, the video settings the official run trained with (cold_start/train.sh, dual_rl/examples/train.sh);
# min_pixels None = 128 merged tokens, the qwen-vl-utils default stage 1 keeps.
STAGE_VIDEO: dict[str, dict[str, float | int | None]] = {
    "cold_start": {"fps": 2.0, "min_pixels": None, "max_pixels": 200_704},
    "dual_rl": {"fps": 2.0, "min_pixels": 3_136, "max_pixels": 307_200},
}


@dataclass
class ImportOfficialConfig:
    """Import an official DeScore checkpoint (stage 1: --lora; stage 2: --model) as a merged DeScore checkpoint."""

    lora: str | None = field(
        default=None, metadata={"help": "Stage 1: the LoRA adapter folder (checkpoint-N/lora_adapter)."}
    )
    non_lora: str | None = field(
        default=None,
        metadata={"help": "Stage 1: non_lora_state_dict.pth (vision tower, merger, embed_tokens with the <Reward> row, "
                          "rm_head). Needed unless --base is the checkpoint-N folder itself."},
    )
    base: str | None = field(
        default=None,
        metadata={"help": "Stage 1: the base the run started from (e.g. Qwen/Qwen3-VL-8B-Instruct, or a folder), or the "
                          "checkpoint-N folder. Stage 2: optional, only recorded."},
    )
    model: str | None = field(
        default=None,
        metadata={"help": "Stage 2: the full HF weights folder (global_step_N/actor/huggingface after verl's model "
                          "merger), tokenizer with <Reward> included."},
    )
    head: str | None = field(default=None, metadata={"help": "rm_head.pth of the same checkpoint (either stage)."})
    tokenizer: str | None = field(
        default=None,
        metadata={"help": "Stage 1: the run's saved tokenizer folder (checkpoint-N) to check the <Reward> id against."},
    )
    output_dir: str | None = field(
        default=None,
        metadata={"help": "Folder to write: new, empty, or an earlier export (it holds descore_export.json)."},
    )
    template: str | None = field(
        default=None,
        metadata={"help": "Text file holding the judge template the run used ({prompt}, one <video>, literal braces "
                          "as {{ }}); default: the kit's, whose wording differs from the official one."},
    )
    cot_placement: Literal["assistant", "user"] = field(
        default="assistant",
        metadata={"help": "Where the CoT and <Reward> go at scoring time: assistant (official stage 2) or user "
                          "(official stage 1 and inference.py)."},
    )
    video_fps: float | None = field(default=None, metadata={"help": "Frames per second; default 2 (both stages)."})
    video_min_frames: int = field(default=4, metadata={"help": "Fewest frames per clip (qwen-vl-utils: 4)."})
    video_max_frames: int = field(default=768, metadata={"help": "Most frames per clip (qwen-vl-utils: 768)."})
    video_min_pixels: int | None = field(
        default=None, metadata={"help": "Fewest pixels per frame; default stage 1: 128 merged tokens, stage 2: 3,136."}
    )
    video_max_pixels: int | None = field(
        default=None, metadata={"help": "Most pixels per frame; default stage 1: 200,704, stage 2: 307,200."}
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = field(
        default="auto", metadata={"help": "Dtype the backbone is loaded, merged and written in."}
    )
    overwrite: bool = field(
        default=False, metadata={"help": "Replace a non-empty --output_dir that is not an earlier export."}
    )

    def __post_init__(self) -> None:
        if self.head is None or self.output_dir is None:
            raise ConfigError("--head (rm_head.pth) and --output_dir are required")
        if (self.lora is None) == (self.model is None):
            raise ConfigError("give exactly one of --lora (a stage-1 LoRA adapter folder) and --model (a stage-2 "
                              "HF weights folder)")
        if self.stage == "cold_start" and self.base is None:
            raise ConfigError("--base is required with --lora: the model the stage-1 run started from")
        if self.stage == "dual_rl" and self.non_lora is not None:
            raise ConfigError("--non_lora belongs to a stage-1 checkpoint; stage 2 (--model) holds every weight")
        for option in ("lora", "model", "tokenizer"):
            value = getattr(self, option)
            if value is not None and not Path(value).expanduser().is_dir():
                raise ConfigError(f"--{option} {value} is not a folder")
        for option in ("head", "non_lora"):
            value = getattr(self, option)
            if value is not None and not Path(value).expanduser().is_file():
                raise ConfigError(f"--{option} {value} is not a file")
        if self.template is not None:
            read_judge_template(self.template)
        self.video_spec(32)  # raises on bad video values (the factor is the processor's, checked at load)
        source = Path(self.lora or self.model).expanduser()
        check_export_target(Path(self.output_dir), source=source.parent if self.lora else source,
                            overwrite=self.overwrite)

    @property
    def stage(self) -> Stage:
        return "cold_start" if self.lora is not None else "dual_rl"

    def video_spec(self, factor: int) -> VideoSpec:
        """The video settings: the flags, else what this stage trained with."""
        defaults = STAGE_VIDEO[self.stage]
        min_pixels = self.video_min_pixels if self.video_min_pixels is not None else defaults["min_pixels"]
        try:
            return VideoSpec(
                fps=self.video_fps if self.video_fps is not None else defaults["fps"],
                min_frames=self.video_min_frames,
                max_frames=self.video_max_frames,
                min_pixels=min_pixels if min_pixels is not None else 128 * factor * factor,
                max_pixels=self.video_max_pixels if self.video_max_pixels is not None else defaults["max_pixels"],
                pixel_factor=factor,
            )
        except ValueError as error:
            raise ConfigError(f"video settings: {error}") from error

    def judge_template(self) -> str:
        if self.template is not None:
            return read_judge_template(self.template)
        logger.warning("no --template: the import scores with the kit's judge template, whose wording differs from the "
                       "official instruction the model was trained on; pass a file holding your copy of it")
        return JUDGE_TEMPLATE


def run_import_official(config: ImportOfficialConfig) -> Path:
    """Rebuild the official model, check it, and write it as a merged DeScore checkpoint; returns its folder."""
    template = config.judge_template()
    head_weight = read_official_head(Path(config.head).expanduser())
    if config.stage == "cold_start":
        backbone, processor, base_folder = _cold_start_backbone(config, head_weight)
    else:
        base_folder = Path(config.model).expanduser()
        backbone, processor = _dual_rl_backbone(config, base_folder)
    hidden_size = backbone.config.get_text_config().hidden_size
    if tuple(head_weight.shape) != (1, hidden_size):
        raise CheckpointError(f"{config.head}: the head weight has shape {tuple(head_weight.shape)}, but the model's "
                              f"hidden size is {hidden_size}: expected (1, {hidden_size})")
    head = nn.Linear(hidden_size, 1, bias=False, dtype=torch.float32)
    with torch.no_grad():
        head.weight.copy_(head_weight)
    model = DeScoreModel(
        backbone,
        processor,
        base_model=_model_name(config.base) if config.base else str(base_folder.resolve()),
        base_fingerprint=weights_fingerprint(base_folder),
        video_spec=config.video_spec(pixel_factor(processor)),
        cot_placement=config.cot_placement,
        head=head,
        judge_template=template,
    )
    model.training_info = {"stage": f"official_{config.stage}"}
    return model.export_merged(config.output_dir, record=import_record(config))


def _model_name(source: str) -> str:
    """A local folder by absolute path, a hub id as given (how the manifest names a base)."""
    local = Path(source).expanduser()
    return str(local.resolve()) if local.exists() else source


def _cold_start_backbone(config: ImportOfficialConfig, head_weight: torch.Tensor) -> tuple[nn.Module, Any, Path]:
    """The stage-1 model as the official code builds it, with its trained tensors loaded and the LoRA merged."""
    from transformers import AutoProcessor

    base_folder = resolve_model_source(config.base).folder
    processor = AutoProcessor.from_pretrained(base_folder)
    fresh_base = REWARD_TOKEN not in processor.tokenizer.get_vocab()
    if fresh_base and config.non_lora is None:
        raise ConfigError(
            f"--base {config.base} has no {REWARD_TOKEN} token, so the trained vision tower, merger and "
            f"{REWARD_TOKEN} row must come from --non_lora (non_lora_state_dict.pth); or pass the checkpoint-N "
            "folder as --base"
        )
    backbone = load_plain_backbone(base_folder, dtype=config.dtype)
    if fresh_base:
        add_reward_token(backbone, processor.tokenizer, REWARD_TOKEN)
    # The official code resizes the embedding to len(tokenizer) (for Qwen3-VL-8B this *shrinks* 151,936 rows).
    backbone.resize_token_embeddings(len(processor.tokenizer), mean_resizing=False)
    if config.tokenizer is not None:
        check_reward_id(processor.tokenizer, Path(config.tokenizer).expanduser())
    else:
        logger.warning("no --tokenizer: the <Reward> id %d was not checked against the run's saved tokenizer",
                       processor.tokenizer.convert_tokens_to_ids(REWARD_TOKEN))
    if config.non_lora is not None:
        load_non_lora(backbone, Path(config.non_lora).expanduser(), head_weight=head_weight)
    lora_dir = Path(config.lora).expanduser()
    return merge_official_lora(backbone, lora_dir), processor, base_folder


def _dual_rl_backbone(config: ImportOfficialConfig, folder: Path) -> tuple[nn.Module, Any]:
    """The stage-2 full model; its tokenizer must hold <Reward> inside the embedding."""
    from transformers import AutoProcessor

    if not list(folder.glob("model*.safetensors")):
        shards = sorted(path.name for path in folder.glob("model_world_size_*"))
        hint = (f" it holds verl's FSDP shards {shards[:4]}: merge them into HF weights with verl's model merger "
                "and pass the huggingface/ folder it writes") if shards else ""
        raise CheckpointError(f"{folder}: no model*.safetensors weights;{hint or ' pass the HF weights folder'}")
    processor = AutoProcessor.from_pretrained(folder)
    if REWARD_TOKEN not in processor.tokenizer.get_vocab():
        raise CheckpointError(f"{folder}: its tokenizer has no {REWARD_TOKEN} token; is this a DeScore stage-2 output?")
    if config.tokenizer is not None:
        check_reward_id(processor.tokenizer, Path(config.tokenizer).expanduser())
    backbone = load_plain_backbone(folder, dtype=config.dtype)
    token_id = processor.tokenizer.convert_tokens_to_ids(REWARD_TOKEN)
    rows = backbone.get_input_embeddings().num_embeddings
    if token_id >= rows:
        raise CheckpointError(f"{folder}: {REWARD_TOKEN} has id {token_id} but the embedding has only {rows} rows")
    return backbone, processor


def check_reward_id(tokenizer: Any, official_folder: Path) -> None:
    """The rebuilt tokenizer gives <Reward> the id (and the vocabulary the size) of the run's saved tokenizer."""
    from transformers import AutoTokenizer

    official = AutoTokenizer.from_pretrained(official_folder)
    if REWARD_TOKEN not in official.get_vocab():
        raise CheckpointError(f"--tokenizer {official_folder}: its tokenizer has no {REWARD_TOKEN} token")
    ours, theirs = tokenizer.convert_tokens_to_ids(REWARD_TOKEN), official.convert_tokens_to_ids(REWARD_TOKEN)
    if ours != theirs or len(tokenizer) != len(official):
        raise CheckpointError(
            f"{REWARD_TOKEN} has id {ours} in a vocabulary of {len(tokenizer)} here but id {theirs} in a vocabulary of "
            f"{len(official)} in {official_folder}: this is not the run's tokenizer (for stage 1, --base must be the "
            "model the run started from)"
        )


def read_official_head(path: Path) -> torch.Tensor:
    """The (1, hidden size) head weight, as float32, of an official ``rm_head.pth`` in either form: stage 1
    ``{"rm_head.weight" | "base_model.model.rm_head.weight": W}``, stage 2 ``{"model": {"rm_head.weight": W}}``."""
    state = load_pickle_safely(path)
    if isinstance(state, Mapping) and set(state) == {"model"} and isinstance(state["model"], Mapping):
        state = state["model"]
    keys = sorted(state) if isinstance(state, Mapping) else type(state).__name__
    if not isinstance(state, Mapping) or len(state) != 1 or next(iter(state)) not in HEAD_KEYS:
        raise CheckpointError(
            f"{path} is not an official rm_head.pth: it holds {keys}; expected one of {list(HEAD_KEYS)} (stage 1) or "
            "{'model': {'rm_head.weight': ...}} (stage 2)"
        )
    weight = next(iter(state.values()))
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.shape[0] != 1:
        found = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise CheckpointError(f"{path}: the head weight is {found}, expected a tensor of shape (1, hidden size)")
    return weight.float()


def load_non_lora(backbone: nn.Module, path: Path, *, head_weight: torch.Tensor) -> None:
    """Copy the non-LoRA trained tensors in: exactly the vision tower (with its mergers) and ``embed_tokens``.
    The file also holds ``rm_head.weight`` (it was trainable), which must equal the head file's ``head_weight``."""
    weights, lora = split_lora(load_tensors(path), source=path)
    carried = weights.pop("rm_head.weight", None)
    if carried is not None and not torch.equal(carried.float(), head_weight):
        raise CheckpointError(f"{path}: its rm_head.weight differs from the --head file's; are both from one checkpoint?")
    parameters = dict(backbone.named_parameters())
    embedding = next(name for name, value in parameters.items() if value is backbone.get_input_embeddings().weight)
    expected = {name for name in parameters if name.startswith("model.visual.")} | {embedding}
    copy_checked(weights, {name: parameters[name] for name in expected}, required=expected,
                 also_unexpected=sorted(f"{name} (LoRA)" for name in lora),
                 what=f"{path} does not fit the official stage-1 model")


def merge_official_lora(backbone: nn.Module, lora_dir: Path) -> nn.Module:
    """Merge ``adapter_model.safetensors`` into ``backbone``. The layers it must cover are those peft would wrap
    for ``adapter_config.json``'s ``target_modules`` (a list of name suffixes, or a regex over full names)."""
    import safetensors.torch

    files = [lora_dir / ADAPTER_CONFIG, lora_dir / ADAPTER_WEIGHTS]
    absent = [path.name for path in files if not path.is_file()]
    if absent:
        raise CheckpointError(f"{lora_dir}: {absent} missing (an official lora_adapter/ folder holds both)")
    settings = json.loads(files[0].read_text())
    if settings.get("peft_type", "LORA") != "LORA" or settings.get("use_dora"):
        raise CheckpointError(f"{files[0]}: only plain LoRA adapters are supported")
    weights, lora = split_lora(safetensors.torch.load_file(files[1]), source=files[1])
    targets = settings.get("target_modules")
    expected = {name for name, module in backbone.named_modules()
                if isinstance(module, nn.Linear) and _targeted(name, targets)}
    missing, unexpected = sorted(expected - set(lora)), sorted(set(lora) - expected) + sorted(weights)
    if missing or unexpected:
        raise CheckpointError(
            f"{files[1]} does not match target_modules {targets} of {files[0].name}: LoRA layers missing "
            f"{missing[:20]}, unexpected tensors {unexpected[:20]}"
        )
    return merge_lora(backbone, lora, rank=int(settings["r"]), alpha=float(settings["lora_alpha"]),
                      use_rslora=bool(settings.get("use_rslora", False)), source=files[1])


def _targeted(name: str, targets: Any) -> bool:
    """peft's rule: a regex string matches the whole name; a list entry matches the name or its last parts."""
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == target or name.endswith("." + target) for target in targets or ())


def import_record(config: ImportOfficialConfig) -> dict[str, Any]:
    """What was imported (each file with its sha256) and with which code: ``descore_export.json``."""
    files: dict[str, Path] = {"head": Path(config.head)}
    if config.non_lora is not None:
        files["non_lora"] = Path(config.non_lora)
    if config.lora is not None:
        files |= {f"lora/{name}": Path(config.lora) / name for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS)}
    if config.model is not None:
        files |= {f"model/{path.name}": path for path in sorted(Path(config.model).glob("model*.safetensors"))}
    if config.template is not None:
        files["template"] = Path(config.template)
    return {
        "imported_from": f"official DeScore, {config.stage}",
        "files": {role: {"path": str(path.expanduser().resolve()), "sha256": file_sha256(path.expanduser())}
                  for role, path in files.items()},
        "base_model": config.base,
        "cot_placement": config.cot_placement,
        "dtype": config.dtype,
        "versions": library_versions(),
        "commit": code_commit(),
    }
