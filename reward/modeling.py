"""The DeScore reward model: an image-text-to-text backbone, a ``<Reward>`` query token and a linear head.

reward = w · h, where h is the backbone's last hidden state *after the final norm* at the ``<Reward>``
position and w is a bias-free linear map hidden_size → 1 (DeScore, arXiv 2605.05922, Fig. 2; the official
``inference.py`` applies ``rm_head`` to ``model.model(...).last_hidden_state``; docs/descore.md "The model").
The hidden size is read from the backbone config. The head runs in float32 so that rewards are not rounded
to bf16.

Checkpoint directory (``save_pretrained`` / ``from_pretrained``)::

    descore_config.json          manifest: base model, its fingerprint, backbone format, <Reward> id, CoT
                                 placement, VideoSpec, judge template, library versions
    reward_head.safetensors      the head weight, shape (1, hidden_size)
    tokenizer / processor files  with <Reward> registered as a special token
    config.json + model*.safetensors           when the backbone is merged (a plain HF checkpoint), or
    adapter_config.json + adapter_model.safetensors   a peft adapter over ``base_model``
    descore_export.json          only in an export (:meth:`DeScoreModel.export_merged`): what it came from
    calibration.json             optional: score stats (``descore reward calibrate --save_to_checkpoint``),
                                 copied into an export

A checkpoint is named by a local folder or a hub id (``owner/name``, fetched once into the hub cache; a local
folder of that name wins), resolved in one place: :func:`reward.checkpoint.resolve_model_source`.

The judge template (the instruction the model reads around the video, see :mod:`reward.prompts`) is part of
the model: training stores the one it used, and every scoring path builds its text from
``DeScoreModel.judge_template``. Checkpoints written before format 3 carry none and get the kit's template.

Loading checks every key both ways and fails on any mismatch. Weights are read from safetensors only. An
adapter checkpoint names its base by absolute path (or hub id) and records the base's fingerprint
(:func:`reward.checkpoint.weights_fingerprint`); loading it over other base weights is refused.

Precision: training keeps every trainable tensor (LoRA, the ``modules_to_save`` copies, the ``<Reward>`` row,
the head) in float32 while frozen weights stay in the load dtype (:func:`upcast_trainable_`). Adapter
checkpoints therefore hold float32 trainables exactly as trained; a merged backbone is written in the load
dtype (every weight rounded once to it, as any bf16 checkpoint), and the head is always float32.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any, Sequence

import safetensors.torch
import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from peft.utils import ModulesToSaveWrapper
from safetensors import safe_open
from torch import nn
from transformers import AutoModelForImageTextToText, AutoProcessor, PreTrainedModel, ProcessorMixin

from .checkpoint import (
    atomic_directory,
    index_single_weights_file,
    normalize_permissions,
    resolve_model_source,
    weights_fingerprint,
)
from .errors import CheckpointError, ConfigError
from .inputs import COT_PLACEMENTS, CotPlacement
from .prompts import JUDGE_TEMPLATE, check_judge_template
from .run_record import looks_like_hub_id
from .video import VideoSpec

logger = logging.getLogger(__name__)

REWARD_TOKEN = "<Reward>"
MANIFEST_NAME = "descore_config.json"
HEAD_NAME = "reward_head.safetensors"
EXPORT_MARKER = "descore_export.json"  # marks a folder written by export_merged (it may be replaced by a re-export)
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# 2 adds base_fingerprint, 3 the judge template; older checkpoints still load (base not verified before 2; the
# kit's judge template, with a warning, before 3).
FORMAT_VERSION = 3
_READABLE_VERSIONS = (1, 2, FORMAT_VERSION)
# The LLM's attention and MLP projections; the vision tower (``visual``) is excluded and trained in full.
DEFAULT_LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


@dataclass(frozen=True)
class LoraSettings:
    """Stage-1 adaptation: LoRA on the LLM projections, full training of ``full_modules``, and only the
    ``<Reward>`` row of the embedding (peft ``trainable_token_indices``)."""

    r: int = 64
    alpha: int = 128
    dropout: float = 0.05
    target_modules: str = DEFAULT_LORA_TARGETS
    full_modules: tuple[str, ...] = ("visual",)

    def peft_config(self, reward_token_id: int) -> LoraConfig:
        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=self.target_modules,
            modules_to_save=list(self.full_modules) or None,
            trainable_token_indices={"embed_tokens": [reward_token_id]},
            bias="none",
        )


@dataclass(frozen=True)
class DeScoreManifest:
    """What a checkpoint holds and how to rebuild it (``descore_config.json``)."""

    base_model: str
    base_fingerprint: str | None
    backbone_format: str
    reward_token: str
    reward_token_id: int
    hidden_size: int
    cot_placement: str
    video_spec: VideoSpec
    judge_template: str | None  # None only in checkpoints written before format 3
    training: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        payload = {**self.__dict__, "video_spec": self.video_spec.to_dict(), "versions": _library_versions()}
        return json.dumps(payload, indent=2, sort_keys=True)

    @classmethod
    def read(cls, directory: Path) -> DeScoreManifest:
        path = directory / MANIFEST_NAME
        if not path.is_file():
            raise CheckpointError(f"{directory} is not a DeScore checkpoint: {MANIFEST_NAME} is missing")
        payload = json.loads(path.read_text())
        payload.pop("versions", None)
        if payload.get("format_version") not in _READABLE_VERSIONS:
            raise CheckpointError(
                f"{path}: format_version {payload.get('format_version')} is not supported (expected {FORMAT_VERSION})"
            )
        if payload["format_version"] == 1:
            payload.setdefault("base_fingerprint", None)
        if payload["format_version"] < 3:
            payload.setdefault("judge_template", None)
        known = set(cls.__dataclass_fields__)
        unknown = set(payload) - known
        missing = {name for name in known if name not in payload} - {"training"}
        if unknown or missing:
            raise CheckpointError(f"{path}: unexpected keys {sorted(unknown)}, missing keys {sorted(missing)}")
        payload["video_spec"] = VideoSpec.from_dict(payload["video_spec"])
        if payload["judge_template"] is not None:
            try:
                check_judge_template(payload["judge_template"])
            except ConfigError as error:
                raise CheckpointError(f"{path}: {error}") from error
        return cls(**payload)

    @property
    def scoring_template(self) -> str:
        """The judge template a model from this checkpoint scores with: its own, or (before format 3, when
        none was stored) the kit's."""
        return JUDGE_TEMPLATE if self.judge_template is None else self.judge_template


def _library_versions() -> dict[str, str]:
    return {name: version(name) for name in ("torch", "transformers", "peft", "safetensors")}


class DeScoreModel(nn.Module):
    """Backbone + ``<Reward>`` query token + linear head; ``forward`` returns one float32 reward per sequence."""

    def __init__(
        self,
        backbone: PreTrainedModel | PeftModel,
        processor: ProcessorMixin,
        *,
        base_model: str,
        video_spec: VideoSpec,
        cot_placement: CotPlacement,
        base_fingerprint: str | None = None,
        reward_token: str = REWARD_TOKEN,
        head: nn.Linear | None = None,
        judge_template: str = JUDGE_TEMPLATE,
    ) -> None:
        super().__init__()
        if cot_placement not in COT_PLACEMENTS:
            raise ConfigError(f"cot_placement must be one of {COT_PLACEMENTS}, got {cot_placement!r}")
        factor = pixel_factor(processor)
        if video_spec.pixel_factor != factor:
            raise ConfigError(
                f"VideoSpec.pixel_factor is {video_spec.pixel_factor} but the processor merges "
                f"{processor.video_processor.patch_size}-px patches {processor.video_processor.merge_size}x, "
                f"i.e. a factor of {factor}; set pixel_factor={factor}"
            )
        reward_token_id = processor.tokenizer.convert_tokens_to_ids(reward_token)
        if reward_token_id is None or reward_token_id == processor.tokenizer.unk_token_id:
            raise ConfigError(f"the tokenizer has no {reward_token!r} token; build the model with DeScoreModel.from_base")
        self.backbone = backbone
        self.processor = processor
        self.base_model = base_model
        self.base_fingerprint = base_fingerprint
        self.video_spec = video_spec
        self.cot_placement = cot_placement
        self.judge_template = check_judge_template(judge_template)
        self.reward_token = reward_token
        self.reward_token_id = reward_token_id
        self.hidden_size = backbone.config.get_text_config().hidden_size
        self.training_info: dict[str, Any] = {}
        self.head = head if head is not None else nn.Linear(self.hidden_size, 1, bias=False, dtype=torch.float32)

    # ----- construction --------------------------------------------------------------------------------

    @classmethod
    def from_base(
        cls,
        model_name_or_path: str,
        *,
        video_spec: VideoSpec,
        cot_placement: CotPlacement = "assistant",
        lora: LoraSettings | None = None,
        dtype: torch.dtype | str = "auto",
        attn_implementation: str | None = None,
        judge_template: str = JUDGE_TEMPLATE,
    ) -> DeScoreModel:
        """A fresh DeScore model over a pretrained backbone (a hub id or a local directory).

        With ``lora`` the trainable parameters are float32 whatever ``dtype`` the frozen weights load in.
        ``judge_template`` is the instruction it will be trained and scored with (saved in its checkpoints).
        """
        directory = resolve_model_source(model_name_or_path).folder
        fingerprint = weights_fingerprint(directory)
        processor = AutoProcessor.from_pretrained(directory)
        backbone = AutoModelForImageTextToText.from_pretrained(
            directory, dtype=dtype, attn_implementation=attn_implementation, use_safetensors=True
        )
        reward_token_id = add_reward_token(backbone, processor.tokenizer, REWARD_TOKEN)
        if lora is not None:
            backbone = upcast_trainable_(get_peft_model(backbone, lora.peft_config(reward_token_id)))
        local = Path(model_name_or_path).expanduser()
        return cls(
            backbone,
            processor,
            base_model=str(local.resolve()) if local.exists() else model_name_or_path,
            base_fingerprint=fingerprint,
            video_spec=video_spec,
            cot_placement=cot_placement,
            judge_template=judge_template,
        )

    @classmethod
    def from_pretrained(
        cls,
        model_name_or_path: str | Path,
        *,
        revision: str | None = None,
        dtype: torch.dtype | str = "auto",
        attn_implementation: str | None = None,
        trainable: bool = False,
    ) -> DeScoreModel:
        """Load a checkpoint written by :meth:`save_pretrained` or :meth:`export_merged`: a local folder or a hub
        id (``revision``: its branch, tag or commit), see :func:`reward.checkpoint.resolve_model_source`. Every
        weight key is checked both ways."""
        directory = resolve_model_source(model_name_or_path, revision=revision).folder
        manifest = DeScoreManifest.read(directory)
        processor = AutoProcessor.from_pretrained(directory)
        if processor.tokenizer.convert_tokens_to_ids(manifest.reward_token) != manifest.reward_token_id:
            raise CheckpointError(f"{directory}: the tokenizer's {manifest.reward_token} id differs from the manifest")
        if manifest.backbone_format == "merged":
            _require_safetensors(directory, "model*.safetensors")
            backbone, info = AutoModelForImageTextToText.from_pretrained(
                directory,
                dtype=dtype,
                attn_implementation=attn_implementation,
                output_loading_info=True,
                use_safetensors=True,
            )
            _raise_on_key_mismatch(directory, info.get("missing_keys", []), info.get("unexpected_keys", []))
            mismatched = info.get("mismatched_keys", [])
            if mismatched:
                raise CheckpointError(f"{directory}: weights with mismatched shapes: {mismatched}")
        elif manifest.backbone_format == "adapter":
            _require_safetensors(directory, ADAPTER_WEIGHTS)
            base_dir = _checked_base(directory, manifest)
            base = AutoModelForImageTextToText.from_pretrained(
                base_dir, dtype=dtype, attn_implementation=attn_implementation, use_safetensors=True
            )
            add_reward_token(base, processor.tokenizer, manifest.reward_token)
            backbone = PeftModel.from_pretrained(base, directory, is_trainable=trainable)
            _check_adapter_keys(directory, backbone)
            if trainable:
                upcast_trainable_(backbone)
        else:
            raise CheckpointError(f"{directory}: unknown backbone_format {manifest.backbone_format!r}")
        if manifest.judge_template is None:
            logger.warning(
                "%s predates stored judge templates (format_version %d); scoring with the kit's JUDGE_TEMPLATE. If "
                "it was trained with other wording, its rewards differ from training.", directory, manifest.format_version
            )
        if backbone.config.get_text_config().hidden_size != manifest.hidden_size:
            raise CheckpointError(f"{directory}: backbone hidden size differs from the manifest's {manifest.hidden_size}")
        model = cls(
            backbone,
            processor,
            base_model=manifest.base_model,
            base_fingerprint=manifest.base_fingerprint,
            video_spec=manifest.video_spec,
            cot_placement=manifest.cot_placement,
            reward_token=manifest.reward_token,
            judge_template=manifest.scoring_template,
        )
        model.load_head(directory)
        model.training_info = manifest.training
        return model.train(trainable)

    def load_head(self, directory: Path) -> None:
        path = directory / HEAD_NAME
        if not path.is_file():
            raise CheckpointError(f"{directory}: {HEAD_NAME} is missing")
        state = safetensors.torch.load_file(path)
        _raise_on_key_mismatch(path, sorted({"weight"} - set(state)), sorted(set(state) - {"weight"}))
        if tuple(state["weight"].shape) != (1, self.hidden_size):
            raise CheckpointError(
                f"{path}: head weight has shape {tuple(state['weight'].shape)}, expected (1, {self.hidden_size})"
            )
        with torch.no_grad():
            self.head.weight.copy_(state["weight"])

    def load_trained_weights(self, directory: str | Path) -> None:
        """Load adapter + head from an adapter-format checkpoint into this (peft) model, e.g. to resume."""
        directory = Path(directory)
        if not isinstance(self.backbone, PeftModel):
            raise CheckpointError("load_trained_weights needs a peft backbone (an adapter-format checkpoint)")
        state = safetensors.torch.load_file(directory / ADAPTER_WEIGHTS)
        expected = set(get_peft_model_state_dict(self.backbone))
        _raise_on_key_mismatch(directory / ADAPTER_WEIGHTS, sorted(expected - set(state)), sorted(set(state) - expected))
        set_peft_model_state_dict(self.backbone, state)
        self.load_head(directory)

    # ----- saving --------------------------------------------------------------------------------------

    @property
    def backbone_format(self) -> str:
        return "adapter" if isinstance(self.backbone, PeftModel) else "merged"

    def manifest(self, training: dict[str, Any] | None = None) -> DeScoreManifest:
        return DeScoreManifest(
            base_model=self.base_model,
            base_fingerprint=self.base_fingerprint,
            backbone_format=self.backbone_format,
            reward_token=self.reward_token,
            reward_token_id=self.reward_token_id,
            hidden_size=self.hidden_size,
            cot_placement=self.cot_placement,
            video_spec=self.video_spec,
            judge_template=self.judge_template,
            training=training if training is not None else self.training_info,
        )

    def save_pretrained(
        self,
        directory: str | Path,
        *,
        state_dict: dict[str, torch.Tensor] | None = None,
        training: dict[str, Any] | None = None,
    ) -> None:
        """Write the checkpoint into ``directory`` (created if needed; existing files are overwritten).

        ``state_dict`` is a full state dict of this module gathered by a sharded engine (FSDP/DeepSpeed);
        without it the live parameters are saved. Use :func:`save_descore` for an atomic write.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        head_weight = self.head.weight if state_dict is None else state_dict["head.weight"]
        backbone_state = None
        if state_dict is not None:
            backbone_state = {k.removeprefix("backbone."): v for k, v in state_dict.items() if k.startswith("backbone.")}
        self.backbone.save_pretrained(directory, state_dict=backbone_state, safe_serialization=True)
        index_single_weights_file(directory)  # so that vLLM does not load the head file as a backbone weight
        safetensors.torch.save_file({"weight": head_weight.detach().float().cpu().contiguous()}, directory / HEAD_NAME)
        self.processor.save_pretrained(directory)
        (directory / MANIFEST_NAME).write_text(self.manifest(training).to_json())
        normalize_permissions(directory)

    def merge_lora_(self) -> DeScoreModel:
        """Fold LoRA, the fully trained modules and the ``<Reward>`` row into the backbone, in place.

        The merged backbone keeps the dtypes the base was loaded in: each fully trained module is rounded once
        from float32 to the dtype of the module it replaces, and peft adds the LoRA product and writes the
        ``<Reward>`` row in the base weight's dtype. A bf16 run thus exports a bf16 backbone.
        """
        if isinstance(self.backbone, PeftModel):
            for wrapper in self.backbone.modules():
                if isinstance(wrapper, ModulesToSaveWrapper):
                    original = dict(wrapper.original_module.named_parameters())
                    for copy in wrapper.modules_to_save.values():
                        for name, parameter in copy.named_parameters():
                            parameter.data = parameter.data.to(original[name].dtype)
            self.backbone = self.backbone.merge_and_unload()
        return self

    def export_merged(
        self, directory: str | Path, *, record: dict[str, Any] | None = None, files: Sequence[Path] = ()
    ) -> Path:
        """Atomically write the merged model as a folder that both kinds of loader open.

        HF and vLLM loaders (``AutoModelForImageTextToText``, ``vllm.LLM``) read the plain backbone in it:
        ``config.json``, ``model*.safetensors`` and the processor with ``<Reward>``. The head and the manifest
        sit beside them (:data:`HEAD_NAME`, :data:`MANIFEST_NAME`), so :meth:`from_pretrained` and
        ``reward.load`` score with the export alone. ``record`` (what was exported, by whom) is written to
        :data:`EXPORT_MARKER` inside the same atomic write, so a folder is marked as an export exactly when the
        export is complete. ``files`` (e.g. the checkpoint's ``calibration.json``) are copied in beside them.
        """
        self.merge_lora_()
        with atomic_directory(directory) as staging:
            self.save_pretrained(staging)
            for file in files:
                shutil.copyfile(file, staging / file.name)
            (staging / EXPORT_MARKER).write_text(json.dumps(record or {}, indent=2, sort_keys=True) + "\n")
        return Path(directory)

    # ----- forward -------------------------------------------------------------------------------------

    def activation_checkpointing_enable(
        self, activation_checkpointing_kwargs: dict | None = None, every_n_layers: int = 1, offload: bool = False
    ) -> None:
        """Called by ``Trainer`` when ``activation_checkpointing`` is on; non-reentrant so frozen inputs work."""
        kwargs = {"use_reentrant": False, **(activation_checkpointing_kwargs or {})}
        self.backbone.config.use_cache = False
        self.backbone.activation_checkpointing_enable(
            activation_checkpointing_kwargs=kwargs, every_n_layers=every_n_layers, offload=offload
        )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **multimodal: Any) -> torch.Tensor:
        """Rewards of shape ``(batch,)``; each sequence must contain exactly one ``<Reward>`` token."""
        positions = reward_positions(input_ids, self.reward_token_id)
        core = multimodal_core(self.backbone)
        hidden = core(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **multimodal).last_hidden_state
        query = hidden[torch.arange(len(positions), device=hidden.device), positions]
        with torch.autocast(device_type=query.device.type, enabled=False):
            return self.head(query.float()).squeeze(-1)


def upcast_trainable_(module: nn.Module) -> nn.Module:
    """Keep every trainable parameter in float32, in place; frozen weights keep their load dtype.

    The optimizer updates the parameters it is given, so they are its master weights: in bf16, an AdamW step
    of lr 2e-6 is below half a bf16 ulp of most weights and rounds away. peft already keeps LoRA and the
    ``<Reward>`` row in float32; its ``modules_to_save`` copies (the vision tower) follow the base dtype, so
    they are raised here. Compute still runs in bf16 under the Trainer's autocast (``bf16: true``).
    """
    for parameter in module.parameters():
        if parameter.requires_grad and parameter.is_floating_point() and parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()
    return module


def pixel_factor(processor: ProcessorMixin) -> int:
    """Pixels per merged visual token side: patch size x spatial merge (32 for Qwen3-VL, 28 for Qwen2.5-VL)."""
    return processor.video_processor.patch_size * processor.video_processor.merge_size


def reward_positions(input_ids: torch.Tensor, reward_token_id: int) -> torch.Tensor:
    """Index of the single ``<Reward>`` token in every row; raises naming the rows that have 0 or several."""
    hits = input_ids == reward_token_id
    counts = hits.sum(dim=1)
    bad = (counts != 1).nonzero().flatten().tolist()
    if bad:
        raise ValueError(
            f"every sequence needs exactly one <Reward> token; rows {bad} have {counts[bad].tolist()} "
            "(was the sequence truncated, or does a CoT contain the token?)"
        )
    return hits.int().argmax(dim=1)


def multimodal_core(backbone: nn.Module) -> nn.Module:
    """The vision+language model under the LM head, whose output is the final-norm hidden state."""
    model = backbone.get_base_model() if isinstance(backbone, PeftModel) else backbone
    core = getattr(model, "model", None)
    if core is None:
        raise TypeError(
            f"{type(model).__name__} has no `.model` (vision + language) module; DeScore needs an "
            "image-text-to-text model such as Qwen3VLForConditionalGeneration"
        )
    return core


def add_reward_token(backbone: PreTrainedModel, tokenizer: Any, token: str) -> int:
    """Register ``token`` as a special token and give it an embedding row; returns its id.

    The row (input and, if untied, output embedding) is set to the mean of the rows of the tokens before
    it — deterministic, so an adapter checkpoint rebuilds exactly the base it was trained on. The embedding
    only grows when the id falls outside it (Qwen checkpoints carry spare rows past the tokenizer).
    """
    tokenizer.add_tokens([token], special_tokens=True)
    token_id = tokenizer.convert_tokens_to_ids(token)
    rows = backbone.get_input_embeddings().num_embeddings
    if token_id >= rows:
        backbone.resize_token_embeddings(token_id + 1, mean_resizing=False)
    with torch.no_grad():
        for embedding in {backbone.get_input_embeddings(), backbone.get_output_embeddings()} - {None}:
            weight = embedding.weight
            weight[token_id] = weight[:token_id].float().mean(dim=0).to(weight.dtype)
    return token_id


def _raise_on_key_mismatch(where: Path, missing: list[str], unexpected: list[str]) -> None:
    if missing or unexpected:
        raise CheckpointError(f"{where}: missing keys {list(missing)[:20]}, unexpected keys {list(unexpected)[:20]}")


def _require_safetensors(directory: Path, pattern: str) -> None:
    """Weights are read from safetensors only: a folder that has only pickled weights is refused."""
    if not list(directory.glob(pattern)):
        pickles = sorted(path.name for path in directory.glob("*.bin"))
        found = f" (it has {pickles}: pickled weights are never loaded)" if pickles else ""
        raise CheckpointError(f"{directory}: no {pattern} weights{found}")


def _checked_base(directory: Path, manifest: DeScoreManifest) -> Path:
    """The local folder of an adapter's base, after checking it is the base the adapter was trained on."""
    if not Path(manifest.base_model).is_dir() and not looks_like_hub_id(manifest.base_model):
        raise CheckpointError(
            f"{directory}: its base model {manifest.base_model} does not exist; put the base weights back there "
            f"or load a merged checkpoint (descore reward export)"
        )
    base = resolve_model_source(manifest.base_model).folder
    if manifest.base_fingerprint is None:
        logger.warning("%s: written without a base fingerprint (format 1); %s is not verified", directory, base)
        return base
    found = weights_fingerprint(base)
    if found != manifest.base_fingerprint:
        raise CheckpointError(
            f"{directory}: base model {base} is not the one this adapter was trained on (fingerprint {found}, "
            f"expected {manifest.base_fingerprint}); its weights or config changed"
        )
    return base


def _check_adapter_keys(directory: Path, backbone: PeftModel) -> None:
    with safe_open(directory / ADAPTER_WEIGHTS, framework="pt") as handle:
        stored = set(handle.keys())
    expected = set(get_peft_model_state_dict(backbone))
    _raise_on_key_mismatch(directory / ADAPTER_WEIGHTS, sorted(expected - stored), sorted(stored - expected))


def save_descore(model: DeScoreModel, directory: str | Path, *, training: dict[str, Any] | None = None) -> Path:
    """Atomically write ``model`` to ``directory``: a crash leaves the previous checkpoint (or none)."""
    with atomic_directory(directory) as staging:
        model.save_pretrained(staging, training=training)
    return Path(directory)

