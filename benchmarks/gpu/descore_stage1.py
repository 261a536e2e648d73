"""DeScore stage-1 training and scoring throughput at Qwen3-VL-8B scale, with random-init weights.

Why random weights: no Qwen3-VL-8B checkpoint is reachable from the lent GPU machines, and step time, memory
and generation speed do not depend on the weight values (generation length is forced, see below). The
backbone is the real ``Qwen3VLForConditionalGeneration`` built from the Qwen3-VL-8B-Instruct configuration,
saved with ``save_pretrained`` beside a processor with the real patch geometry and the locally trained tiny
tokenizer (its ~600 ids are a subset of the 151,936-row vocabulary), then loaded through
``DeScoreModel.from_base`` — stage 1's loading code, whose time is reported.

What is measured
1. Stage-1 training step: one pair per micro-step, i.e. two sequences (A, B) in one forward as
   ``PairCollator`` builds them; bf16 weights under bf16 autocast; ``LoraSettings()`` (LoRA r 64 / α 128 on
   the LLM projections, full vision tower, the ``<Reward>`` embedding row, the head); activation
   checkpointing; Bradley–Terry loss, backward, gradient clipping at 1.0 and fused AdamW (the ``Trainer``
   defaults). Reported: sequence length, median step time after ``warmup_steps``, peak
   ``torch.cuda.max_memory_allocated``, tokens/s.
2. Scoring with ``DeScoreReward`` over a plain (merged-format) backbone, per batch size B: no-CoT
   ``head_rewards`` (processor + one forward) → videos/s; ``generate_cots`` forced to exactly G new tokens
   (greedy, repetition penalty 1.05, ``min_new_tokens = max_new_tokens = G`` through the generation config)
   → generated tokens/s, with a 1-token generate timed first as the prefill so decode tokens/s is reported
   too; ``head_rewards`` with a G-token CoT; and generate + score as think-then-score videos/s. The scoring
   forward uses a synthetic G-token CoT: decoded text from random weights and a tiny tokenizer has no
   meaningful length.

Inputs: random uint8 clips of 5 s at 16 fps, 480×832 (Wan-2.1's output), sampled and resized by
``load_video`` with stage 1's ``VideoSpec()`` (2 fps → 10 frames; ≤ 200,704 px per frame → 320×576; 900
video tokens per clip), the judge prompt of ``reward.prompts.judge_text`` and a synthetic CoT of
``cot_tokens`` tokens. The tiny tokenizer cuts the judge text into more tokens than Qwen's does, so text and
video token counts are reported separately.

Qwen3-VL-8B-Instruct (its ``config.json``, cross-checked against public copies): text hidden 4096, 36 layers,
32 heads, 8 KV heads, head_dim 128, intermediate 12288, vocab 151936, rope θ 5e6 with interleaved M-RoPE
sections [24, 20, 20], untied embeddings; vision depth 27, hidden 1152, intermediate 4304, 16 heads, patch
16, spatial merge 2, temporal patch 2, out_hidden 4096, DeepStack layers [8, 16, 24], 2304 position
embeddings: 8.77 B parameters. Processor size limits are those of its preprocessor configs.

Run (one H100: a few minutes; ~18 GB of scratch disk for the random checkpoint)::

    python -m benchmarks.gpu.descore_stage1 --json-out results/descore_stage1.json
    python -m benchmarks.gpu.descore_stage1 --tiny --device cpu      # CPU smoke test of every path, ~10 s
    python -m benchmarks.gpu.descore_stage1 --dry-run --device cpu   # 8B config, meta param count, one pair

A measurement that runs out of GPU memory is reported as OOM. Any other failure in a part is logged with its
traceback, the other part still runs, and the exit code is 1. The JSON file is rewritten after each part.
"""

from __future__ import annotations

import logging
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from transformers import (
    AutoModelForImageTextToText,
    BatchFeature,
    HfArgumentParser,
    PreTrainedTokenizerFast,
    Qwen2VLImageProcessor,
    Qwen3VLConfig,
    Qwen3VLProcessor,
    Qwen3VLVideoProcessor,
)

from reward.data import PreferencePair
from reward.errors import ConfigError
from reward.inputs import encode, generation_text, scoring_text
from reward.losses import bradley_terry_loss
from reward.modeling import REWARD_TOKEN, DeScoreModel, LoraSettings, pixel_factor
from reward.pairs import PairCollator, PairExample
from reward.prompts import JudgeText, judge_text
from reward.scoring import DeScoreReward
from reward.tiny_models import CHAT_TEMPLATE, build_tiny_tokenizer
from reward.video import SampledVideo, VideoFrames, VideoSpec, load_video

from .harness import machine_name, release_memory, timed, write_json

logger = logging.getLogger(__name__)

PARTS = ("train", "score")
PROMPT = "A red sports car drifts around a hairpin bend on a mountain road at sunset, cinematic lighting, drone shot."
COT_SENTENCE = (
    "The video shows a red car that moves left across a wet mountain road while the camera pans slowly; the "
    "subject and dynamics match the prompt, the lighting is warm and the style is clean. "
)
QWEN3_VL_8B_TEXT: dict[str, Any] = {
    "vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36,
    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "hidden_act": "silu",
    "max_position_embeddings": 262144, "rms_norm_eps": 1e-6, "attention_bias": False,
    "rope_parameters": {
        "rope_type": "default", "rope_theta": 5_000_000.0, "mrope_section": [24, 20, 20], "mrope_interleaved": True
    },
}  # fmt: skip
QWEN3_VL_8B_VISION: dict[str, Any] = {
    "depth": 27, "hidden_size": 1152, "intermediate_size": 4304, "num_heads": 16, "in_channels": 3,
    "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2, "out_hidden_size": 4096,
    "deepstack_visual_indexes": [8, 16, 24], "num_position_embeddings": 2304, "hidden_act": "gelu_pytorch_tanh",
}  # fmt: skip
# The tiny twin keeps the real vocabulary and patch geometry, so token ids and video tokens behave as at scale.
TINY_TEXT: dict[str, Any] = {
    **QWEN3_VL_8B_TEXT, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 8192,
    "rope_parameters": {
        "rope_type": "default", "rope_theta": 1e4, "mrope_section": [4, 2, 2], "mrope_interleaved": True
    },
}  # fmt: skip
TINY_VISION: dict[str, Any] = {
    **QWEN3_VL_8B_VISION, "depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
    "out_hidden_size": 64, "deepstack_visual_indexes": [1], "num_position_embeddings": 256,
}  # fmt: skip
# Qwen3-VL-8B-Instruct's preprocessor_config.json and video_preprocessor_config.json (pixels per image / clip).
IMAGE_SIZE = {"shortest_edge": 65536, "longest_edge": 16777216}
VIDEO_SIZE = {"shortest_edge": 4096, "longest_edge": 25165824}


@dataclass(frozen=True)
class Scale:
    """Backbone configuration, input clip and default workload of one benchmark scale."""

    name: str
    text: dict[str, Any]
    vision: dict[str, Any]
    frame_size: tuple[int, int]
    clip_seconds: float
    clip_fps: float
    video_spec: VideoSpec
    steps: int
    cot_tokens: int
    gen_tokens: int
    batch_sizes: tuple[int, ...]


FULL_SCALE = Scale(
    name="Qwen3-VL-8B-Instruct config", text=QWEN3_VL_8B_TEXT, vision=QWEN3_VL_8B_VISION, frame_size=(480, 832),
    clip_seconds=5.0, clip_fps=16.0, video_spec=VideoSpec(), steps=5, cot_tokens=512, gen_tokens=256,
    batch_sizes=(1, 8),
)  # fmt: skip
TINY_SCALE = Scale(
    name="tiny Qwen3-VL", text=TINY_TEXT, vision=TINY_VISION, frame_size=(48, 80), clip_seconds=5.0,
    clip_fps=16.0, video_spec=VideoSpec(min_frames=4, max_frames=8, min_pixels=1024, max_pixels=4096), steps=2,
    cot_tokens=24, gen_tokens=8, batch_sizes=(1, 2),
)  # fmt: skip


@dataclass
class BenchmarkConfig:
    device: str = field(default="cuda", metadata={"help": "Torch device to benchmark on."})
    tiny: bool = field(default=False, metadata={"help": "Tiny Qwen3-VL and clips: a CPU smoke test of every path."})
    dry_run: bool = field(default=False, metadata={"help": "Only configs, meta-device param count and one pair."})
    parts: list[str] = field(default_factory=lambda: list(PARTS), metadata={"help": f"Parts to run, from {PARTS}."})
    steps: int | None = field(default=None, metadata={"help": "Timed training steps (default 5; tiny 2)."})
    warmup_steps: int = field(default=1, metadata={"help": "Untimed training steps before the timed ones."})
    repeats: int = field(default=3, metadata={"help": "Timed repeats of each scoring forward (median reported)."})
    cot_tokens: int | None = field(default=None, metadata={"help": "CoT tokens per training sequence (512; tiny 24)."})
    gen_tokens: int | None = field(default=None, metadata={"help": "New tokens per generated CoT (256; tiny 8)."})
    batch_sizes: list[int] | None = field(default=None, metadata={"help": "Scoring batch sizes (1 8; tiny 1 2)."})
    attn: str = field(default="sdpa", metadata={"help": "attn_implementation: sdpa, eager, flash_attention_2."})
    cot: bool = field(default=True, metadata={"help": "Also time CoT generation and scoring with a CoT (off: no-CoT only)."})
    json_out: str | None = field(default=None, metadata={"help": "Also write every result to this JSON file."})
    scratch_dir: str | None = field(default=None, metadata={"help": "Folder for the random checkpoint (~18 GB)."})
    seed: int = field(default=0, metadata={"help": "Seed of the random weights and clips."})

    def __post_init__(self) -> None:
        scale = self.scale
        self.steps = scale.steps if self.steps is None else self.steps
        self.cot_tokens = scale.cot_tokens if self.cot_tokens is None else self.cot_tokens
        self.gen_tokens = scale.gen_tokens if self.gen_tokens is None else self.gen_tokens
        self.batch_sizes = list(scale.batch_sizes) if self.batch_sizes is None else self.batch_sizes
        if set(self.parts) - set(PARTS):
            raise ConfigError(f"unknown parts {sorted(set(self.parts) - set(PARTS))}; choose from {PARTS}")
        counts = [self.steps, self.repeats, self.cot_tokens, self.gen_tokens, *self.batch_sizes]
        if min(counts) < 1 or self.warmup_steps < 0 or not self.batch_sizes:
            raise ConfigError(f"counts must be >= 1, warmup_steps >= 0 and batch_sizes non-empty; got {self}")
        device = torch.device(self.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device {self.device!r} was asked for but CUDA is not available; use --device cpu")
        if device.type != "cuda" and not (self.tiny or self.dry_run):
            raise ConfigError("the full 8B scale needs a GPU; on CPU pass --tiny (smoke test) or --dry-run")

    @property
    def scale(self) -> Scale:
        return TINY_SCALE if self.tiny else FULL_SCALE

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if torch.device(self.device).type == "cuda" else torch.float32


@dataclass
class Measurement:
    """One timed workload; ``tokens`` counts the (prompt) tokens of one call over all its sequences."""

    name: str
    videos: int
    status: str = "ok"
    seq_len: int | None = None
    tokens: int | None = None
    seconds: float | None = None
    seconds_all: list[float] = field(default_factory=list)
    throughput: float | None = None
    throughput_unit: str = "tok/s"
    videos_per_s: float | None = None
    peak_memory_gib: float | None = None
    note: str = ""


@dataclass
class Report:
    scale: str
    machine: str
    versions: dict[str, str]
    date: str
    dtype: str
    attn: str
    parameters: int
    trainable_parameters: int | None = None
    clip: str = ""
    video_tokens_per_clip: int | None = None
    setup_seconds: dict[str, float] = field(default_factory=dict)
    measurements: list[Measurement] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


# ----- backbone and processor ------------------------------------------------------------------------------


def build_processor(tokenizer: PreTrainedTokenizerFast, vision: dict[str, Any]) -> Qwen3VLProcessor:
    """A Qwen3-VL processor with the backbone's patch geometry and the real model's size limits."""
    geometry = {
        "patch_size": vision["patch_size"],
        "temporal_patch_size": vision["temporal_patch_size"],
        "merge_size": vision["spatial_merge_size"],
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    }
    image_processor = Qwen2VLImageProcessor(**geometry, size=IMAGE_SIZE)
    video_processor = Qwen3VLVideoProcessor(**geometry, size=VIDEO_SIZE)
    return Qwen3VLProcessor(image_processor, tokenizer, video_processor, chat_template=CHAT_TEMPLATE)


def backbone_config(scale: Scale, tokenizer: PreTrainedTokenizerFast) -> Qwen3VLConfig:
    """The scale's Qwen3-VL config with the tokenizer's special-token ids."""
    vocab = scale.text["vocab_size"]
    if len(tokenizer) + 1 > vocab:
        raise ConfigError(f"the vocabulary ({vocab}) must hold the tokenizer's {len(tokenizer)} ids and <Reward>")
    tokens = {"image": "<|image_pad|>", "video": "<|video_pad|>"}
    tokens |= {"vision_start": "<|vision_start|>", "vision_end": "<|vision_end|>"}
    token_ids = {f"{name}_token_id": tokenizer.convert_tokens_to_ids(token) for name, token in tokens.items()}
    text = {**scale.text, "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
    return Qwen3VLConfig(text_config=text, vision_config=dict(scale.vision), tie_word_embeddings=False, **token_ids)


def count_parameters(config: Qwen3VLConfig) -> int:
    """Parameters of the backbone, counted on the meta device (nothing is allocated)."""
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    return sum(parameter.numel() for parameter in model.parameters())


def save_random_backbone(directory: Path, scale: Scale, *, device: torch.device, dtype: torch.dtype) -> Path:
    """Initialise the backbone on ``device`` (fast at 8B) and save it with its processor and tokenizer."""
    tokenizer = build_tiny_tokenizer()
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(backbone_config(scale, tokenizer), dtype=dtype)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(directory)
    build_processor(tokenizer, scale.vision).save_pretrained(directory)
    return directory


# ----- synthetic inputs ------------------------------------------------------------------------------------


def synthetic_clip(rng: np.random.Generator, scale: Scale, *, name: str) -> SampledVideo:
    """Random uint8 frames of the scale's clip, sampled and resized by the video contract."""
    shape = (round(scale.clip_seconds * scale.clip_fps), *scale.frame_size, 3)
    frames = rng.integers(0, 256, size=shape, dtype=np.uint8)
    return load_video(VideoFrames(frames, fps=scale.clip_fps, name=name), scale.video_spec)


def synthetic_cot(tokenizer: PreTrainedTokenizerFast, tokens: int) -> str:
    """Plain text of ``tokens`` tokens (give or take a merge at the joins once placed in a sequence)."""
    sentence_tokens = len(tokenizer(COT_SENTENCE, add_special_tokens=False).input_ids)
    ids = tokenizer(COT_SENTENCE * (tokens // sentence_tokens + 2), add_special_tokens=False).input_ids
    return tokenizer.decode(ids[:tokens])


def collate_pair(
    processor: Any, clips: Sequence[SampledVideo], *, reward_token: str, placement: str, cot: str
) -> BatchFeature:
    """One pair with both CoTs kept, batched by ``PairCollator``: sequence A, sequence B, and the label."""
    pair = PreferencePair(PROMPT, clips[0].source, clips[1].source, label=1, line=1, cot_a=cot, cot_b=cot)
    collator = PairCollator(processor, reward_token, placement)
    return collator([PairExample(pair, clips[0], clips[1], use_cot=True)])


def describe_clip(scale: Scale, clip: SampledVideo) -> str:
    count, _, height, width = clip.frames.shape
    source = f"{round(scale.clip_seconds * scale.clip_fps)} frames {scale.frame_size[0]}x{scale.frame_size[1]}"
    return f"{source} @ {scale.clip_fps:g} fps -> {count} frames {height}x{width}"


def sequence_shape(batch: BatchFeature, video_token_id: int) -> tuple[int, int, int]:
    """(longest sequence, real tokens in the batch, video tokens of the first sequence)."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    return ids.shape[1], int(mask.sum()), int((ids[0] == video_token_id).sum())


# ----- timing and memory -----------------------------------------------------------------------------------


def guarded(measure: Callable[[], Measurement], device: torch.device, *, name: str, videos: int) -> Measurement:
    """Run one measurement with fresh peak-memory stats; CUDA OOM becomes an ``OOM`` row, not a crash."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        result = measure()
    except torch.OutOfMemoryError:
        result = Measurement(name, videos, status="OOM")
    release_memory(device)  # after the except block, so the traceback's tensors are gone
    if device.type == "cuda":
        result.peak_memory_gib = torch.cuda.max_memory_allocated(device) / 2**30
    logger.info("%s, %d videos: %s s, %s", name, videos, _cell(result.seconds, ".3f"), result.status)
    return result


# ----- part 1: stage-1 training step -----------------------------------------------------------------------


def train_step(model: DeScoreModel, optimizer: torch.optim.Optimizer, *, batch: BatchFeature, autocast: bool) -> float:
    """One micro-step that is also an optimizer step: BT loss on (r_A, r_B), backward, clip at 1.0, AdamW."""
    inputs = dict(batch)
    labels = inputs.pop("labels")
    with torch.autocast(labels.device.type, dtype=torch.bfloat16, enabled=autocast):
        rewards = model(**inputs)
    pair_rewards = rewards.view(2, -1).T  # (pairs, 2): r_A, r_B, as in DeScoreTrainer.compute_loss
    loss = bradley_terry_loss(pair_rewards[:, 0] - pair_rewards[:, 1], labels).mean()
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]], max_norm=1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def benchmark_training(directory: Path, config: BenchmarkConfig, *, report: Report) -> list[Measurement]:
    device, scale = torch.device(config.device), config.scale
    start = time.perf_counter()
    model = DeScoreModel.from_base(
        str(directory),
        video_spec=scale.video_spec,
        lora=LoraSettings(),
        dtype=config.dtype,
        attn_implementation=config.attn,
    ).to(device)
    report.setup_seconds["train_load"] = time.perf_counter() - start
    model.activation_checkpointing_enable()
    model.train()
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    report.trainable_parameters = sum(parameter.numel() for parameter in trainable)
    optimizer = torch.optim.AdamW(trainable, lr=2e-6, fused=True if device.type == "cuda" else None)

    rng = np.random.default_rng(config.seed)
    clips = [synthetic_clip(rng, scale, name=f"random-clip-{side}") for side in "ab"]
    cot = synthetic_cot(model.processor.tokenizer, config.cot_tokens)
    batch, report.setup_seconds["collate_pair"] = timed(
        lambda: collate_pair(
            model.processor, clips, reward_token=model.reward_token, placement=model.cot_placement, cot=cot
        ),
        device,
    )
    seq_len, tokens, video_tokens = sequence_shape(batch, model.backbone.config.video_token_id)
    report.clip, report.video_tokens_per_clip = describe_clip(scale, clips[0]), video_tokens
    step = partial(train_step, model, optimizer, batch=batch.to(device), autocast=device.type == "cuda")

    def measure() -> Measurement:
        for _ in range(config.warmup_steps):
            step()
        losses, seconds = zip(*(timed(step, device) for _ in range(config.steps)))
        median = statistics.median(seconds)
        note = f"{seq_len - video_tokens} text + {video_tokens} video tok/seq; last loss {losses[-1]:.4f}"
        return Measurement(
            "train step (1 pair = 2 seqs)",
            2,
            seq_len=seq_len,
            tokens=tokens,
            seconds=median,
            seconds_all=list(seconds),
            throughput=tokens / median,
            videos_per_s=2 / median,
            note=note,
        )

    try:
        return [guarded(measure, device, name="train step", videos=2)]
    finally:
        optimizer.zero_grad(set_to_none=True)


# ----- part 2: scoring throughput --------------------------------------------------------------------------


def force_generation_length(reward: DeScoreReward, tokens: int) -> None:
    """Every CoT gets exactly ``tokens`` new tokens: EOS is masked until then (``min_new_tokens``)."""
    reward.generation = replace(reward.generation, max_new_tokens=tokens, temperature=0.0)
    reward.model.backbone.generation_config.min_new_tokens = tokens


def measure_head(
    reward: DeScoreReward,
    judges: list[JudgeText],
    *,
    clips: list[SampledVideo],
    cots: list[str | None],
    name: str,
    repeats: int,
) -> Measurement:
    """``head_rewards`` (processor + forward) after a warm-up call; the processor's share is timed alone."""
    model = reward.model
    texts = [
        scoring_text(model.processor, judge, cot, placement=model.cot_placement, reward_token=model.reward_token)
        for judge, cot in zip(judges, cots)
    ]
    batch, encode_seconds = timed(lambda: encode(model.processor, texts, clips), reward.device)
    seq_len, tokens, _ = sequence_shape(batch, model.backbone.config.video_token_id)
    call = partial(reward.head_rewards, judges, clips, cots)
    call()
    seconds = [timed(call, reward.device)[1] for _ in range(repeats)]
    median = statistics.median(seconds)
    return Measurement(
        name,
        len(clips),
        seq_len=seq_len,
        tokens=tokens,
        seconds=median,
        seconds_all=seconds,
        throughput=tokens / median,
        videos_per_s=len(clips) / median,
        note=f"processor {encode_seconds:.3f} s of it",
    )


def measure_generate(
    reward: DeScoreReward, judges: list[JudgeText], *, clips: list[SampledVideo], tokens: int
) -> Measurement:
    """``generate_cots`` forced to ``tokens`` new tokens; a 1-token call (after a warm-up one) is the prefill."""
    processor = reward.model.processor
    prompts = encode(processor, [generation_text(processor, judge) for judge in judges], clips, padding_side="left")
    seq_len, prompt_tokens, _ = sequence_shape(prompts, reward.model.backbone.config.video_token_id)
    call = partial(reward.generate_cots, judges, clips)
    force_generation_length(reward, 1)
    call()
    _, prefill = timed(call, reward.device)
    force_generation_length(reward, tokens)
    _, seconds = timed(call, reward.device)
    decode = len(clips) * (tokens - 1) / (seconds - prefill) if tokens > 1 and seconds > prefill else float("nan")
    return Measurement(
        f"generate CoT ({tokens} tok)",
        len(clips),
        seq_len=seq_len,
        tokens=prompt_tokens,
        seconds=seconds,
        seconds_all=[seconds],
        throughput=len(clips) * tokens / seconds,
        throughput_unit="gen tok/s",
        videos_per_s=len(clips) / seconds,
        note=f"prefill {prefill:.3f} s; decode {decode:.1f} tok/s",
    )


def end_to_end(generate: Measurement, score: Measurement) -> Measurement:
    """Think-then-score: the generate and the scoring forward of the same batch, back to back."""
    if generate.seconds is None or score.seconds is None:
        return Measurement("CoT end-to-end", generate.videos, status="n/a")
    seconds = generate.seconds + score.seconds
    return Measurement("CoT end-to-end", generate.videos, seconds=seconds, videos_per_s=generate.videos / seconds)


def benchmark_scoring(directory: Path, config: BenchmarkConfig, *, report: Report) -> list[Measurement]:
    device, scale = torch.device(config.device), config.scale
    start = time.perf_counter()
    model = DeScoreModel.from_base(
        str(directory), video_spec=scale.video_spec, dtype=config.dtype, attn_implementation=config.attn
    )
    reward = DeScoreReward(model=model, use_cot=True, batch_size=max(config.batch_sizes), device=device)
    report.setup_seconds["score_load"] = time.perf_counter() - start
    rng = np.random.default_rng(config.seed + 1)
    cot = synthetic_cot(model.processor.tokenizer, config.gen_tokens)
    results = []
    for size in config.batch_sizes:
        clips = [synthetic_clip(rng, scale, name=f"random-clip-{index}") for index in range(size)]
        judges = [judge_text(PROMPT)] * size
        head = partial(measure_head, reward, judges, clips=clips, repeats=config.repeats)
        no_cot = guarded(
            partial(head, cots=[None] * size, name="score no-CoT"), device, name="score no-CoT", videos=size
        )
        if not config.cot:
            results.append(no_cot)
            continue
        generate = partial(measure_generate, reward, judges, clips=clips, tokens=config.gen_tokens)
        cot_generate = guarded(generate, device, name="generate CoT", videos=size)
        cot_score = guarded(
            partial(head, cots=[cot] * size, name="score with CoT"), device, name="score with CoT", videos=size
        )
        results += [no_cot, cot_generate, cot_score, end_to_end(cot_generate, cot_score)]
    return results


# ----- dry run, report, entry point ------------------------------------------------------------------------


def dry_run(config: BenchmarkConfig, report: Report) -> list[Measurement]:
    """What the full path needs without weights: processor, pixel factor, clip sizes, one collated pair."""
    scale = config.scale
    tokenizer = build_tiny_tokenizer()
    processor = build_processor(tokenizer, scale.vision)
    if pixel_factor(processor) != scale.video_spec.pixel_factor:
        raise ConfigError(f"pixel factor {pixel_factor(processor)} != VideoSpec's {scale.video_spec.pixel_factor}")
    tokenizer.add_tokens([REWARD_TOKEN], special_tokens=True)
    rng = np.random.default_rng(config.seed)
    clips = [synthetic_clip(rng, scale, name=f"random-clip-{side}") for side in "ab"]
    cot = synthetic_cot(tokenizer, config.cot_tokens)
    batch, seconds = timed(
        lambda: collate_pair(processor, clips, reward_token=REWARD_TOKEN, placement="assistant", cot=cot),
        torch.device("cpu"),
    )
    seq_len, tokens, video_tokens = sequence_shape(batch, tokenizer.convert_tokens_to_ids("<|video_pad|>"))
    report.clip, report.video_tokens_per_clip = describe_clip(scale, clips[0]), video_tokens
    patches = tuple(batch["pixel_values_videos"].shape)
    note = f"{seq_len - video_tokens} text + {video_tokens} video tok/seq; pixel_values_videos {patches}"
    return [Measurement("collate pair (dry run)", 2, seq_len=seq_len, tokens=tokens, seconds=seconds, note=note)]


def _cell(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown_report(report: Report) -> str:
    versions = " / ".join(f"{name} {value}" for name, value in report.versions.items())
    trainable = "-" if report.trainable_parameters is None else f"{report.trainable_parameters / 1e6:.1f} M params"
    setup = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in report.setup_seconds.items()) or "-"
    lines = [
        f"### DeScore stage-1 benchmark: {report.scale}, random init",
        "",
        "| | |",
        "|---|---|",
        f"| machine | {report.machine} |",
        f"| versions | {versions} |",
        f"| date | {report.date} |",
        f"| backbone | {report.parameters / 1e9:.3f} B params, {report.dtype}, attn {report.attn} |",
        f"| trainable | {trainable} (LoRA r64 + vision tower + <Reward> row + head) |",
        f"| clip | {report.clip or '-'} ({_cell(report.video_tokens_per_clip, 'd')} video tokens) |",
        f"| setup | {setup} |",
        "",
        "| measurement | videos | seq len | tokens | time (s) | throughput | videos/s | peak GiB | status | note |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for row in report.measurements:
        throughput = "-" if row.throughput is None else f"{row.throughput:,.0f} {row.throughput_unit}"
        cells = [row.name, str(row.videos), _cell(row.seq_len, "d"), _cell(row.tokens, "d")]
        cells += [_cell(row.seconds, ".3f"), throughput, _cell(row.videos_per_s, ".2f")]
        cells += [_cell(row.peak_memory_gib, ".1f"), row.status, row.note]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [f"\n**error** {error}" for error in report.errors]
    return "\n".join(lines)


def new_report(config: BenchmarkConfig) -> Report:
    """An empty report of ``config``'s scale and machine, with the backbone's parameter count."""
    scale = config.scale
    report = Report(
        scale=scale.name,
        machine=machine_name(torch.device(config.device)),
        versions={name: version(name) for name in ("torch", "transformers", "peft")},
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        dtype=str(config.dtype).removeprefix("torch."),
        attn=config.attn,
        parameters=count_parameters(backbone_config(scale, build_tiny_tokenizer())),
    )
    logger.info("%s: %.3f B parameters (counted on the meta device)", scale.name, report.parameters / 1e9)
    return report


def run(config: BenchmarkConfig) -> Report:
    """Build and save the random checkpoint once, then run each part on it; returns the report."""
    device, scale = torch.device(config.device), config.scale
    torch.manual_seed(config.seed)
    report = new_report(config)
    if config.dry_run:
        report.measurements += dry_run(config, report)
        write_json(asdict(report), config.json_out)
        return report
    with tempfile.TemporaryDirectory(prefix="descore-bench-", dir=config.scratch_dir) as scratch:
        directory = Path(scratch)
        save = partial(save_random_backbone, directory, scale, device=device, dtype=config.dtype)
        _, report.setup_seconds["build_and_save"] = timed(save, device)
        release_memory(device)
        run_parts(directory, config, report)
    return report


def run_parts(directory: Path, config: BenchmarkConfig, report: Report) -> None:
    """Each of ``config.parts`` on the saved checkpoint in ``directory``, its results and errors into ``report``."""
    device = torch.device(config.device)
    parts = {"train": benchmark_training, "score": benchmark_scoring}
    for name in config.parts:
        try:
            report.measurements += parts[name](directory, config, report=report)
        # One failed part must not cost the other part's numbers on a one-shot GPU lease: it is logged with
        # its traceback, listed in the report, and makes the exit code 1.
        except Exception as error:
            logger.exception("part %r failed", name)
            report.errors.append(f"{name}: {type(error).__name__}: {error}")
        release_memory(device)
        write_json(asdict(report), config.json_out)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    (config,) = HfArgumentParser(BenchmarkConfig).parse_args_into_dataclasses(args=argv)
    report = run(config)
    print(markdown_report(report))
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
