"""Step-cost planner for DeScore (``descore reward plan``): stage-1 training step and no-CoT scoring on a GPU class.

Qwen3-VL-8B-Instruct, measured on one H100 80GB (BENCHMARKS.md, 2026-11-26,
``benchmarks/gpu/results/descore_stage1_h100_2026-11-26.json``): a stage-1 training step on one pair (2 x 2,107
tokens) and no-CoT scoring at batch 1 and 8 (1,595 tokens each). Time is FLOPs / (bf16 peak x efficiency) + an
overhead, memory is weights + state + activations per token; the constants below are fitted to those points
and every other GPU class, batch size or checkpointing choice is an extrapolation. No torch import.
"""

from __future__ import annotations

import itertools
import json
import math
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import ConfigError
from .gpu_classes import GIB, GPUS, Gpu, gpu_class, usable_gib

CALIBRATION_GPU = "h100-80gb"
QWEN3_VL_8B = "Qwen/Qwen3-VL-8B-Instruct"


@dataclass(frozen=True)
class QwenVl:
    """What the planner needs of a Qwen3-VL backbone: parameter counts and the LLM's shape."""

    params: int
    vision_params: int   # vision tower + merger, trained in full
    layers: int
    hidden: int
    intermediate: int
    kv_width: int        # key/value heads x head dim

    def lora_params(self, rank: int) -> int:
        """LoRA on the seven LLM projections (q, k, v, o, gate, up, down) of every layer."""
        h, i, kv = self.hidden, self.intermediate, self.kv_width
        return self.layers * rank * ((h + h) + 2 * (h + kv) + (h + h) + 2 * (h + i) + (i + h))

    def block_activation_bytes(self) -> int:
        """bf16 bytes one decoder layer saves per token: ~16 hidden-sized tensors and 3 MLP-sized (gate, up, product)."""
        return 2 * (16 * self.hidden + 3 * self.intermediate)


# Parameters: the benchmark JSON's count; vision: its trainable count minus the r64 LoRA (so it also holds the
# <Reward> row and head). LLM shape: Qwen3-VL-8B-Instruct's text_config.
HUB = {QWEN3_VL_8B: QwenVl(8_767_123_696, 750_984_432 - 174_587_904, 36, 4096, 12_288, 1024)}

# ----- fitted to the H100 points --------------------------------------------------------------------------------
# No-CoT scoring, exactly through batch 1 (0.094 s) and batch 8 (0.740 s); peak memory: weights + bytes per token
# and unit of LLM width (the mean of the two points' fits, 199 kB per token at width 4096).
SCORE_EFFICIENCY, SCORE_OVERHEAD_S = 0.3228, 0.0016
SCORE_BYTES_PER_TOKEN_AND_WIDTH = 48.6
# Stage-1 step (one pair, checkpointing on, 0.974 s, 25.2 GiB): one point, so the efficiency is fitted exactly and
# the trained modules' state is what the peak leaves after the weights and the activations (counted as in the Wan
# planner: every layer's input plus ~2 layers' worth live in the checkpointed backward). It comes to 8.7 bytes per
# trainable parameter; how that splits between gradients and AdamW moments is not identifiable from one point.
TRAIN_EFFICIENCY = 0.3286
TRAINABLE_STATE_BYTES = 8.74
BACKWARD_LIVE_BLOCKS = 2.05


def safetensors_params(folder: Path) -> tuple[int, int]:
    """(all parameters, those under ``visual``) of a local checkpoint, read from the safetensors headers."""
    total = vision = 0
    for path in sorted(folder.glob("*.safetensors")):
        with path.open("rb") as handle:
            header = json.loads(handle.read(struct.unpack("<Q", handle.read(8))[0]))
        for name, entry in header.items():
            if name != "__metadata__":
                count = math.prod(entry["shape"])
                total += count
                vision += count if ".visual." in f".{name}" else 0
    return total, vision


def qwen_vl(model: str) -> QwenVl:
    """The backbone of a local Qwen3-VL folder (config.json + safetensors) or the known hub id."""
    folder = Path(model)
    if (folder / "config.json").is_file():
        text = json.loads((folder / "config.json").read_text()).get("text_config", {})
        total, vision = safetensors_params(folder)
        if not total or not text:
            raise ConfigError(f"{model}: needs a Qwen3-VL config.json with text_config and *.safetensors weights")
        head_dim = text.get("head_dim", text["hidden_size"] // text["num_attention_heads"])
        return QwenVl(total, vision, text["num_hidden_layers"], text["hidden_size"], text["intermediate_size"],
                      text["num_key_value_heads"] * head_dim)
    if model not in HUB:
        raise ConfigError(f"model_name_or_path {model!r}: the planner reads a local Qwen3-VL folder or knows "
                          f"{', '.join(HUB)}")
    return HUB[model]


def video_tokens(seconds: float, height: int, width: int, *, fps: float, min_frames: int, max_frames: int,
                 max_pixels: int) -> int:
    """LLM tokens of one clip under the stage-1 video contract: frames at ``fps`` (even, clamped), each resized to
    multiples of 32 within ``max_pixels``, 2 x 2 patches of 16 px merged, 2 frames per temporal patch."""
    frames = min(max(round(seconds * fps), min_frames), max_frames)
    frames += frames % 2
    scale = math.sqrt(height * width / max_pixels) if height * width > max_pixels else 1.0
    rows, cols = (max(32, math.floor(size / scale / 32) * 32) for size in (height, width))
    return frames // 2 * (rows // 32) * (cols // 32)


@dataclass(frozen=True)
class RewardEstimate:
    """One setting: its flags, peak GiB and seconds per call (train micro-step or scoring batch)."""

    name: str
    flags: str
    peak_gib: float
    seconds: float
    rate: float      # training: seconds per optimizer step; scoring: videos per second


def forward_flops(model: QwenVl, tokens: int, sequences: int) -> float:
    """2 x parameters x tokens + 4 T^2 d attention per layer, per sequence (the vision tower's patches are
    counted with the LLM's tokens: a ~7 % share at this size, absorbed by the fitted efficiency)."""
    return sequences * (2 * model.params * tokens + 4 * tokens * tokens * model.hidden * model.layers)


def train_estimate(model: QwenVl, gpu: Gpu, *, lora_rank: int, pairs: int, checkpointing: bool, tokens: int,
                   accumulation: int) -> RewardEstimate:
    """A stage-1 micro-step of ``pairs`` pairs (2 sequences each)."""
    sequences = 2 * pairs
    block = model.block_activation_bytes()
    if checkpointing:
        per_token, passes = model.layers * model.hidden * 2 + BACKWARD_LIVE_BLOCKS * block, 4
    else:
        per_token, passes = (model.layers + BACKWARD_LIVE_BLOCKS - 1) * block, 3
    trainable = model.vision_params + model.lora_params(lora_rank)
    peak = (model.params * 2 + trainable * TRAINABLE_STATE_BYTES + per_token * tokens * sequences) / GIB
    seconds = passes * forward_flops(model, tokens, sequences) / (gpu.bf16_tflops * 1e12 * TRAIN_EFFICIENCY)
    flags = f"--per_device_train_batch_size {pairs} --activation_checkpointing {str(checkpointing).lower()}"
    return RewardEstimate("stage-1 training", flags, peak, seconds, accumulation * seconds)


def score_estimate(model: QwenVl, gpu: Gpu, *, batch: int, tokens: int) -> RewardEstimate:
    """One no-CoT scoring forward over ``batch`` videos."""
    peak = (model.params * 2 + SCORE_BYTES_PER_TOKEN_AND_WIDTH * model.hidden * tokens * batch) / GIB
    seconds = forward_flops(model, tokens, batch) / (gpu.bf16_tflops * 1e12 * SCORE_EFFICIENCY) + SCORE_OVERHEAD_S
    return RewardEstimate("no-CoT scoring", f"--batch_size {batch}", peak, seconds, batch / seconds)


DESCORE_REWARDS = {"descore": 256, "descore_no_cot": 0}  # registry name -> CoT tokens written before scoring
WAN_FPS = 16


def reward_term_gib(entry: dict, *, num_frames: int, height: int, width: int) -> tuple[float, str] | None:
    """Memory a DeScore reward term holds on a training GPU (bf16 weights + one scoring batch of the generated
    clips under the stage-1 video contract) and how it was counted; None for a term the planner does not model.
    A ``path`` that is not a local checkpoint is taken to be Qwen3-VL-8B."""
    if entry["name"] not in DESCORE_REWARDS:
        return None
    path = entry.get("path")
    local = path is not None and (Path(path) / "config.json").is_file()
    model = qwen_vl(path) if local else HUB[QWEN3_VL_8B]
    batch = entry.get("batch_size", 4)
    tokens = video_tokens(num_frames / WAN_FPS, height, width, fps=2.0, min_frames=4, max_frames=768,
                          max_pixels=200_704) + 695 + DESCORE_REWARDS[entry["name"]]
    peak = score_estimate(model, GPUS[CALIBRATION_GPU], batch=batch, tokens=tokens).peak_gib
    return peak, f"{entry['name']} ({path if local else 'Qwen3-VL-8B assumed'}, batch {batch}): {peak:.1f} GiB"


@dataclass
class RewardPlanConfig:
    """Where to plan for, and the clip and text lengths to plan with. The recipe (--config, flags) supplies the
    model, LoRA rank, batch sizes and video contract; its other keys are ignored."""

    model_name_or_path: str = field(default=QWEN3_VL_8B, metadata={"help": "Qwen3-VL: local folder or hub id."})
    lora_rank: int = field(default=64, metadata={"help": "LoRA rank on the LLM projections."})
    per_device_train_batch_size: int = field(default=1, metadata={"help": "Pairs per GPU per micro-step."})
    effective_batch_size: int | None = field(default=None, metadata={"help": "Pairs per optimizer step, all GPUs."})
    activation_checkpointing: bool | None = field(default=True, metadata={"help": "Recompute activations."})
    video_fps: float = field(default=2.0, metadata={"help": "Frames sampled per second."})
    video_min_frames: int = field(default=4, metadata={"help": "Fewest frames sampled per clip."})
    video_max_frames: int = field(default=768, metadata={"help": "Most frames sampled per clip."})
    video_max_pixels: int = field(default=200_704, metadata={"help": "Most pixels per frame."})
    clip_seconds: float = field(default=5.0, metadata={"help": "Clip length (Wan-2.1: 81 frames at 16 fps)."})
    clip_height: int = field(default=480, metadata={"help": "Clip height in pixels."})
    clip_width: int = field(default=832, metadata={"help": "Clip width in pixels."})
    text_tokens: int = field(default=1207, metadata={"help": "Text tokens per training sequence (judge prompt + "
                                                             "CoT; the benchmark's 512-token CoT gave 1,207)."})
    score_text_tokens: int = field(default=695, metadata={"help": "Text tokens per no-CoT scoring sequence "
                                                                  "(the benchmark's: 695)."})
    gpu: str = field(default=CALIBRATION_GPU, metadata={"help": f"GPU class: {', '.join(GPUS)}. Only "
                                                                f"{CALIBRATION_GPU} is measured."})
    gpus: int = field(default=8, metadata={"help": "GPUs of the training run (data parallel)."})
    top: int = field(default=6, metadata={"help": "Fitting settings to list per table."})
    json: bool = field(default=False, metadata={"help": "Print the plan as JSON instead of tables."})

    def __post_init__(self) -> None:
        gpu_class(self.gpu)
        for name in ("lora_rank", "per_device_train_batch_size", "gpus", "top", "text_tokens", "score_text_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class RewardPlan:
    gpu: Gpu
    recipe: RewardEstimate
    training: list[RewardEstimate]
    scoring: list[RewardEstimate]


def run_reward_plan(config: RewardPlanConfig) -> RewardPlan | str:
    """``descore reward plan``: the recipe's training step, the training and scoring settings that fit, ranked."""
    model, gpu = qwen_vl(config.model_name_or_path), gpu_class(config.gpu)
    clip = video_tokens(config.clip_seconds, config.clip_height, config.clip_width, fps=config.video_fps,
                        min_frames=config.video_min_frames, max_frames=config.video_max_frames,
                        max_pixels=config.video_max_pixels)
    effective = config.effective_batch_size or config.per_device_train_batch_size * config.gpus

    def train(pairs: int, checkpointing: bool) -> RewardEstimate:
        return train_estimate(model, gpu, lora_rank=config.lora_rank, pairs=pairs, checkpointing=checkpointing,
                              tokens=clip + config.text_tokens, accumulation=math.ceil(effective / (pairs * config.gpus)))

    recipe = train(config.per_device_train_batch_size, bool(config.activation_checkpointing))
    per_gpu = max(1, effective // config.gpus)  # pair counts that keep the recipe's effective batch
    training = [train(pairs, ckpt) for pairs, ckpt in itertools.product((1, 2, 4, 8), (True, False))
                if per_gpu % pairs == 0]
    scoring = [score_estimate(model, gpu, batch=b, tokens=clip + config.score_text_tokens) for b in (1, 2, 4, 8, 16, 32)]
    fits = [e for e in training + scoring if e.peak_gib <= usable_gib(gpu)]
    if not fits:
        smallest = min(training + scoring, key=lambda e: e.peak_gib)
        raise ConfigError(f"nothing fits one {gpu.name} ({usable_gib(gpu):.1f} GiB usable): the smallest peak is "
                          f"{smallest.peak_gib:.1f} GiB ({smallest.name}), of which the bf16 weights are "
                          f"{model.params * 2 / GIB:.1f} GiB")
    plan = RewardPlan(gpu, recipe,
                      sorted((e for e in fits if e in training), key=lambda e: e.rate)[: config.top],
                      sorted((e for e in fits if e in scoring), key=lambda e: -e.rate)[: config.top])
    return json.dumps(asdict(plan), indent=2) if config.json else plan


def format_reward_plan(plan: RewardPlan | str) -> str:
    if isinstance(plan, str):
        return plan
    measured = plan.gpu.name == CALIBRATION_GPU
    lines = [f"DeScore plan: {plan.gpu.name} ({usable_gib(plan.gpu):.1f} GiB usable)",
             "numbers: " + ("calibrated on this GPU class (H100 measurements at batch 1 / one pair; the rest are "
                            "estimates)" if measured else
                            f"EXTRAPOLATED from H100 measurements by bf16 peak ({plan.gpu.bf16_tflops:.0f} vs 989 "
                            "TFLOP/s): not measured"), "",
             f"{'':<3} {'peak GiB':>8} {'micro-step s':>12} {'optimizer step s':>16}  flags"]

    def row(label: str, e: RewardEstimate) -> str:
        return f"{label:<3} {e.peak_gib:>8.1f} {e.seconds:>12.3f} {e.rate:>16.2f}  {e.flags}"

    fits = "fits" if plan.recipe.peak_gib <= usable_gib(plan.gpu) else "does NOT fit"
    lines += [row("rec", plan.recipe) + f"   <- the recipe as written ({fits})",
              *(row(str(i), e) for i, e in enumerate(plan.training, 1)), "",
              f"{'':<3} {'peak GiB':>8} {'batch s':>12} {'videos/s':>16}  no-CoT scoring (reward score --no-cot)"]
    lines += [f"{i:<3} {e.peak_gib:>8.1f} {e.seconds:>12.3f} {e.rate:>16.1f}  {e.flags}" for i, e in enumerate(plan.scoring, 1)]
    return "\n".join(lines)
