"""VideoAlign's checkpoint layout for VideoReward: reading it, and writing tiny random-weight ones.

A VideoReward folder, as the training code of KwaiVGI/VideoAlign (``train_reward.py``, ``trainer.py``,
``utils.py::load_model_from_checkpoint``, commit 219ab9d) writes it and HF ``KwaiVGI/VideoReward`` ships it::

    model_config.json      data_config / model_config / peft_lora_config / inference_config (optional)
    checkpoint-<step>/     one folder per saved step; the highest is used unless a step is asked for
        model.pth                          the whole model's state dict (the released weights), or
        adapter_model.safetensors          the LoRA tensors of the language model, plus
        non_lora_state_dict.pth            every other trained tensor: the vision tower, the embedding
                                           (rows of the three reward tokens) and ``rm_head``

Tensor names follow transformers 4.45's Qwen2-VL (``visual.*``, ``model.layers.*``) behind peft's
``base_model.model.`` prefix; LoRA-wrapped layers keep their frozen weight under ``.base_layer.`` in
``model.pth``. :func:`read_checkpoint` maps every name onto today's layout (``model.visual.*``,
``model.language_model.*``) and splits off the LoRA pairs (:mod:`reward.upstream_weights`, shared with the
official DeScore import). ``.pth`` files are read with ``torch.load(weights_only=True)`` only, so a pickle that
would run code is refused.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import torch

from .errors import CheckpointError
from .upstream_weights import PEFT_PREFIX as _PEFT_PREFIX
from .upstream_weights import load_tensors, split_lora

SPECIAL_TOKENS: tuple[str, str, str] = ("<|VQ_reward|>", "<|MQ_reward|>", "<|TA_reward|>")
DIMENSIONS: tuple[str, str, str] = ("VQ", "MQ", "TA")
CONFIG_NAME = "model_config.json"
FULL_WEIGHTS = "model.pth"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
NON_LORA_WEIGHTS = "non_lora_state_dict.pth"
HEAD_KEY = "rm_head.weight"
EMBED_KEY = "model.language_model.embed_tokens.weight"

_STEP_FOLDER = re.compile(r"^checkpoint-(\d+)$")


@dataclass(frozen=True)
class HeadStatistics:
    """Mean and std of each raw head (VQ, MQ, TA) over VideoAlign's validation set (``inference_config``)."""

    means: tuple[float, float, float]
    stds: tuple[float, float, float]


@dataclass(frozen=True)
class VideoRewardConfig:
    """What ``model_config.json`` says about how to rebuild and feed the model (only the keys inference reads)."""

    base_model: str
    base_revision: str | None
    output_dim: int
    lora_enabled: bool
    lora_rank: int
    lora_alpha: float
    use_rslora: bool
    fps: float
    num_frames: int | None
    max_frame_pixels: int
    statistics: HeadStatistics | None

    @classmethod
    def read(cls, folder: Path) -> VideoRewardConfig:
        path = folder / CONFIG_NAME
        if not path.is_file():
            raise CheckpointError(f"{folder} is not a VideoReward checkpoint: {CONFIG_NAME} is missing")
        payload = json.loads(path.read_text())
        data, model, lora = (_section(payload, name, path) for name in ("data_config", "model_config", "peft_lora_config"))
        _expect(path, "model_config.use_special_tokens", model.get("use_special_tokens"), True)
        _expect(path, "model_config.reward_token", model.get("reward_token"), "special")
        _expect(path, "data_config.eval_dim", data.get("eval_dim"), list(DIMENSIONS))
        _expect(path, "data_config.sample_type", data.get("sample_type", "uniform"), "uniform")
        if model.get("output_dim") not in (1, 3):
            raise CheckpointError(
                f"{path}: model_config.output_dim is {model.get('output_dim')!r}; a VideoReward head has 1 output "
                "(one head read at each reward token) or 3 (head row k read at reward token k)"
            )
        inference = payload.get("inference_config")
        statistics = None if inference is None else HeadStatistics(
            means=tuple(float(_required(inference, f"{d}_mean", path)) for d in DIMENSIONS),
            stds=tuple(float(_required(inference, f"{d}_std", path)) for d in DIMENSIONS),
        )
        return cls(
            base_model=str(_required(model, "model_name_or_path", path)),
            base_revision=model.get("model_revision"),
            output_dim=int(model["output_dim"]),
            lora_enabled=bool(lora.get("lora_enable", False)),
            lora_rank=int(lora.get("lora_r", 0)),
            lora_alpha=float(lora.get("lora_alpha", 0)),
            use_rslora=bool(lora.get("use_rslora", False)),
            fps=float(data.get("fps", 2.0)),
            num_frames=None if data.get("num_frames") is None else int(data["num_frames"]),
            max_frame_pixels=int(_required(data, "max_frame_pixels", path)),
            statistics=statistics,
        )

    @property
    def lora_scaling(self) -> float:
        """peft's LoRA scale: alpha / r, or alpha / sqrt(r) with rsLoRA."""
        return self.lora_alpha / (self.lora_rank**0.5 if self.use_rslora else self.lora_rank)


def _section(payload: Mapping[str, Any], name: str, path: Path) -> Mapping[str, Any]:
    section = payload.get(name)
    if not isinstance(section, Mapping):
        raise CheckpointError(f"{path}: the {name!r} section is missing")
    return section


def _required(section: Mapping[str, Any], key: str, path: Path) -> Any:
    if section.get(key) is None:
        raise CheckpointError(f"{path}: {key!r} is missing")
    return section[key]


def _expect(path: Path, key: str, value: Any, wanted: Any) -> None:
    if value != wanted:
        raise CheckpointError(f"{path}: {key} is {value!r}; VideoReward inference supports only {wanted!r}")


def find_checkpoint(folder: Path, step: int | None = None) -> Path:
    """``checkpoint-<step>`` inside ``folder``: the asked step, or the highest one.

    Unlike VideoAlign's loader, a step that does not exist is an error, not a silent fallback to the latest.
    """
    steps = {int(match.group(1)): child for child in folder.iterdir()
             if child.is_dir() and (match := _STEP_FOLDER.match(child.name))}
    if not steps:
        raise CheckpointError(f"{folder} holds no checkpoint-<step> folder")
    if step is None:
        return steps[max(steps)]
    if step not in steps:
        raise CheckpointError(f"{folder} has no checkpoint-{step}; it has steps {sorted(steps)}")
    return steps[step]


class CheckpointTensors(NamedTuple):
    """A checkpoint's tensors under today's Qwen2-VL names.

    ``weights``: backbone tensors and ``rm_head.weight``; ``lora``: module name -> (A, B) of each LoRA layer;
    ``complete``: True for ``model.pth`` (every weight is in it), False for an adapter checkpoint (only what
    training changed; the rest comes from the base model).
    """

    weights: dict[str, torch.Tensor]
    lora: dict[str, tuple[torch.Tensor, torch.Tensor]]
    complete: bool


def read_checkpoint(directory: Path) -> CheckpointTensors:
    """Read ``model.pth`` or ``adapter_model.safetensors`` + ``non_lora_state_dict.pth`` from ``directory``.

    Raises:
        CheckpointError: neither layout is complete (the message names the missing file), a ``.pth`` holds
            anything but tensors, or a LoRA layer lacks its A or B half.
    """
    full = directory / FULL_WEIGHTS
    if full.is_file():
        return CheckpointTensors(*split_lora(load_tensors(full), source=full), complete=True)
    missing = [name for name in (ADAPTER_WEIGHTS, NON_LORA_WEIGHTS) if not (directory / name).is_file()]
    if missing:
        raise CheckpointError(
            f"{directory} holds neither {FULL_WEIGHTS} nor a complete adapter checkpoint: {', '.join(missing)} "
            f"missing (an adapter checkpoint needs both {ADAPTER_WEIGHTS} and {NON_LORA_WEIGHTS})"
        )
    import safetensors.torch

    tensors = {**safetensors.torch.load_file(directory / ADAPTER_WEIGHTS), **load_tensors(directory / NON_LORA_WEIGHTS)}
    return CheckpointTensors(*split_lora(tensors, source=directory), complete=False)


def upstream_name(name: str) -> str:
    """The inverse of :func:`reward.upstream_weights.current_name` without the peft prefix: today's name as transformers 4.45 spelt it."""
    if name.startswith("model.visual."):
        return name.removeprefix("model.")
    if name.startswith("model.language_model."):
        return "model." + name.removeprefix("model.language_model.")
    return name


# ---------------------------------------------------------------------------------------------------------
# Writing: a random-weight VideoReward in the upstream layout, for tests and throughput benchmarks.


@dataclass(frozen=True)
class Qwen2VLSizes:
    """Architecture sizes of the Qwen2-VL backbone; :data:`QWEN2_VL_2B` are those of Qwen/Qwen2-VL-2B-Instruct."""

    hidden_size: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    intermediate_size: int = 128
    vision_depth: int = 2
    vision_dim: int = 32
    vision_heads: int = 2
    rope_theta: float = 10_000.0


QWEN2_VL_2B = Qwen2VLSizes(
    hidden_size=1536, layers=28, heads=12, kv_heads=2, intermediate_size=8960,
    vision_depth=32, vision_dim=1280, vision_heads=16, rope_theta=1_000_000.0,
)
_TINY_STATISTICS = HeadStatistics(means=(3.6757, 1.1646, 2.8105), stds=(2.2476, 1.3811, 2.5121))


def save_tiny_qwen2_vl(directory: Path, sizes: Qwen2VLSizes = Qwen2VLSizes(), *, seed: int = 0) -> Path:
    """A random-weight Qwen2-VL (the real classes) with the local BPE tokenizer, processor and chat template."""
    from transformers import (
        Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor, Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    from .tiny_models import CHAT_TEMPLATE, build_tiny_tokenizer

    torch.manual_seed(seed)
    tokenizer = build_tiny_tokenizer()
    head_dim = sizes.hidden_size // sizes.heads
    quarter = head_dim // 8  # M-RoPE sections (temporal, height, width) sum to head_dim / 2, as 16/24/24 of 128
    text = {
        "vocab_size": len(tokenizer), "hidden_size": sizes.hidden_size, "intermediate_size": sizes.intermediate_size,
        "num_hidden_layers": sizes.layers, "num_attention_heads": sizes.heads, "num_key_value_heads": sizes.kv_heads,
        "max_position_embeddings": 32768, "bos_token_id": None,
        "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id,
        "rope_parameters": {"rope_type": "default", "rope_theta": sizes.rope_theta,
                            "mrope_section": [head_dim // 2 - 3 * quarter, quarter + quarter // 2, quarter + quarter // 2]},
    }
    vision = {"depth": sizes.vision_depth, "embed_dim": sizes.vision_dim, "num_heads": sizes.vision_heads,
              "hidden_size": sizes.hidden_size, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2}
    ids = {name: tokenizer.convert_tokens_to_ids(f"<|{token}|>") for name, token in (
        ("image_token_id", "image_pad"), ("video_token_id", "video_pad"),
        ("vision_start_token_id", "vision_start"), ("vision_end_token_id", "vision_end"))}
    config = Qwen2VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True, **ids)
    Qwen2VLForConditionalGeneration(config).save_pretrained(directory)
    geometry = {"patch_size": 14, "temporal_patch_size": 2, "merge_size": 2}
    size = {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 1280}
    Qwen2VLProcessor(
        Qwen2VLImageProcessor(**geometry, size=size), tokenizer, Qwen2VLVideoProcessor(**geometry, size=size),
        chat_template=CHAT_TEMPLATE,
    ).save_pretrained(directory)
    return directory


def save_tiny_videoreward(
    directory: str | Path,
    *,
    sizes: Qwen2VLSizes = Qwen2VLSizes(),
    adapter: bool = True,
    output_dim: int = 3,
    lora_rank: int = 4,
    lora_alpha: float = 8.0,
    step: int = 5,
    statistics: HeadStatistics | None = _TINY_STATISTICS,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> Path:
    """Write a random-weight VideoReward in VideoAlign's layout: ``base/`` (the Qwen2-VL it starts from),
    ``model_config.json`` and ``checkpoint-<step>/`` holding the adapter files (``adapter=True``) or ``model.pth``.

    The trained tensors (LoRA on every language-model linear layer, the reward-token embedding rows, the vision
    tower, ``rm_head``) are drawn from ``seed`` alone, so both layouts of one seed hold the same model.
    ``sizes=QWEN2_VL_2B`` writes a checkpoint of the released model's size (with the tiny tokenizer).
    """
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    directory = Path(directory)
    base = save_tiny_qwen2_vl(directory / "base", sizes, seed=seed)
    processor = AutoProcessor.from_pretrained(base)
    processor.tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
    backbone = Qwen2VLForConditionalGeneration.from_pretrained(base, dtype=dtype)
    backbone.resize_token_embeddings(len(processor.tokenizer), mean_resizing=False)
    generator = torch.Generator().manual_seed(seed + 1)
    trained = _trained_tensors(backbone, generator, output_dim=output_dim)
    lora = {name: (0.02 * torch.randn(lora_rank, module.in_features, generator=generator),
                   0.02 * torch.randn(module.out_features, lora_rank, generator=generator))
            for name, module in backbone.named_modules()
            if isinstance(module, torch.nn.Linear) and name.startswith("model.language_model.")}
    folder = directory / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    if adapter:
        _save_adapter(folder, trained, lora, base=base, rank=lora_rank, alpha=lora_alpha)
    else:
        state = backbone.state_dict() | trained
        if backbone.config.tie_word_embeddings:
            state["lm_head.weight"] = state[EMBED_KEY]
        torch.save(_peft_full_state(state, lora), folder / FULL_WEIGHTS)
    _write_config(directory, base=base, output_dim=output_dim, rank=lora_rank, alpha=lora_alpha, statistics=statistics)
    return directory


def _trained_tensors(backbone: torch.nn.Module, generator: torch.Generator, *, output_dim: int) -> dict[str, torch.Tensor]:
    """What VideoAlign trains besides LoRA: the vision tower (perturbed), the embedding's new rows and rm_head."""
    state = backbone.state_dict()
    trained = {name: tensor + 0.02 * torch.randn(tensor.shape, generator=generator).to(tensor.dtype)
               for name, tensor in state.items() if name.startswith("model.visual.")}
    embedding = state[EMBED_KEY].clone()
    embedding[-len(SPECIAL_TOKENS):] = torch.randn(len(SPECIAL_TOKENS), embedding.shape[1], generator=generator)
    trained[EMBED_KEY] = embedding
    trained[HEAD_KEY] = torch.randn(output_dim, embedding.shape[1], generator=generator) / embedding.shape[1] ** 0.5
    return trained


def _peft_full_state(state: Mapping[str, torch.Tensor], lora: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> dict:
    """A peft-wrapped model's state dict as transformers 4.45 named it: what VideoAlign's ``model.pth`` holds."""
    full = {}
    for name, tensor in state.items():
        module, _, leaf = name.rpartition(".")
        if module in lora:
            name = f"{module}.base_layer.{leaf}"
        full[_PEFT_PREFIX + upstream_name(name)] = tensor
    for module, (down, up) in lora.items():
        full[f"{_PEFT_PREFIX}{upstream_name(module)}.lora_A.default.weight"] = down
        full[f"{_PEFT_PREFIX}{upstream_name(module)}.lora_B.default.weight"] = up
    return full


def _save_adapter(folder: Path, trained: Mapping[str, torch.Tensor], lora: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
                  *, base: Path, rank: int, alpha: float) -> None:
    import safetensors.torch

    adapter = {}
    for module, (down, up) in lora.items():
        adapter[f"{_PEFT_PREFIX}{upstream_name(module)}.lora_A.weight"] = down.contiguous()
        adapter[f"{_PEFT_PREFIX}{upstream_name(module)}.lora_B.weight"] = up.contiguous()
    safetensors.torch.save_file(adapter, folder / ADAPTER_WEIGHTS)
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": str(base), "r": rank,
        "lora_alpha": alpha, "lora_dropout": 0.05, "bias": "none", "use_rslora": False,
        "target_modules": sorted(upstream_name(module) for module in lora),
    }, indent=2))
    torch.save({_PEFT_PREFIX + upstream_name(name): tensor for name, tensor in trained.items()}, folder / NON_LORA_WEIGHTS)


def _write_config(directory: Path, *, base: Path, output_dim: int, rank: int, alpha: float,
                  statistics: HeadStatistics | None) -> None:
    payload: dict[str, Any] = {
        "data_config": {"meta_data": "train.csv", "data_dir": "videos", "meta_data_test": None,
                        "max_frame_pixels": 200704, "num_frames": None, "fps": 2.0, "eval_dim": list(DIMENSIONS),
                        "prompt_template_type": "detailed_special", "sample_type": "uniform", "use_tied_data": True},
        "training_args": {"output_dir": str(directory), "bf16": True},
        "model_config": {"model_name_or_path": str(base), "model_revision": "main", "output_dim": output_dim,
                         "use_special_tokens": True, "reward_token": "special", "loss_type": "btt",
                         "torch_dtype": "bfloat16"},
        "peft_lora_config": {"lora_enable": True, "vision_lora": False, "lora_r": rank, "lora_alpha": alpha,
                             "lora_dropout": 0.05, "lora_namespan_exclude": ["lm_head", "rm_head", "embed_tokens", "visual"],
                             "lora_task_type": "CAUSAL_LM", "use_rslora": False, "num_lora_modules": -1},
    }
    if statistics is not None:
        payload["inference_config"] = {f"{dim}_{kind}": values[index] for kind, values in
                                       (("mean", statistics.means), ("std", statistics.stds))
                                       for index, dim in enumerate(DIMENSIONS)}
    (directory / CONFIG_NAME).write_text(json.dumps(payload, indent=4))
