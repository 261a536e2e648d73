"""Arguments shared by the generator jobs: the policy (Wan + LoRA + sampling) and the run (output, logging).

Each job parses ``(PolicyConfig, RunConfig, <AlgorithmConfig>)`` with the CLI's YAML + flag rules.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from reward.errors import ConfigError
from reward.records import read_records
from reward.run_record import check_model_source, looks_like_hub_id

from .policy import ATTENTION_BACKENDS, LoraSpec, VideoShape, WanPolicy, attention_backend
from .tiny_wan import resolve_prompt_file, resolve_wan

# transformers.get_scheduler names whose schedule is fixed by learning_rate, warmup_steps and max_steps alone.
LR_SCHEDULES = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial",
                "inverse_sqrt")
Dtype = Literal["float32", "bfloat16", "float16"]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class PolicyConfig:
    """The Wan policy: weights, LoRA, resolution and how videos are denoised (steps, guidance). How GRPO makes
    its rollouts stochastic (the SDE) is GRPO's own setting (``GrpoConfig``)."""

    model: str = field(
        default="Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
        metadata={"help": "Diffusers Wan checkpoint: local dir or hub id; tiny:wan builds (once, cached) a tiny random-weight Wan."},
    )
    transformer_dtype: Dtype = field(default="bfloat16", metadata={"help": "Transformer weights (the VAE is always float32)."})
    text_encoder_dtype: Dtype = field(default="bfloat16", metadata={"help": "UMT5 weights; it is dropped after prompts are cached."})
    lora_rank: int = field(default=32, metadata={"help": "LoRA rank on attention (q, k, v, out) and FFN."})
    lora_alpha: int = field(default=64, metadata={"help": "LoRA alpha."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: list(LoraSpec.target_modules), metadata={"help": "Module names that get LoRA."}
    )
    gradient_checkpointing: bool = field(default=True, metadata={"help": "Recompute transformer blocks in backward."})
    height: int = field(default=480, metadata={"help": "Video height (multiple of 16)."})
    width: int = field(default=832, metadata={"help": "Video width (multiple of 16)."})
    num_frames: int = field(default=33, metadata={"help": "Frames (4k + 1)."})
    num_steps: int = field(default=20, metadata={"help": "Denoising steps per rollout (Flow-GRPO: 20 for Wan)."})
    guidance_scale: float = field(default=4.5, metadata={"help": "CFG scale in sampling and training; 1 disables CFG."})
    negative_prompt: str = field(default="", metadata={"help": "Negative prompt of the unconditional branch."})
    max_sequence_length: int = field(default=512, metadata={"help": "UMT5 tokens per prompt (Wan: 512)."})
    vae_tiling: bool = field(default=False, metadata={"help": "Decode in tiles (less memory)."})
    vae_slicing: bool = field(default=False, metadata={"help": "Decode one video at a time (less memory)."})
    compile_transformer: bool = field(
        default=False,
        metadata={"help": "torch.compile each repeated transformer block (regional compilation, static shapes), "
                          "after LoRA injection; the first step compiles, later ones reuse the graphs. Off by "
                          "default: so far only checked on CPU (same samples as eager), not timed on a GPU."},
    )
    attention_backend: str | None = field(
        default=None,
        metadata={"help": "Pin the scaled-dot-product attention kernel of every transformer forward: "
                          f"{', '.join(ATTENTION_BACKENDS)}; None: PyTorch picks one per call."},
    )

    def __post_init__(self) -> None:
        """Every value is checked here, before any model loads; the message names the option and the fix."""
        self.model = resolve_wan(self.model)  # tiny:wan -> its cached folder (built on first use)
        check_model_source(self.model, what="model")
        if self.num_steps < 2:
            raise ConfigError(f"num_steps must be >= 2 (the last step is deterministic), got {self.num_steps}")
        for option in ("height", "width"):
            value = getattr(self, option)
            if value <= 0 or value % 16:
                raise ConfigError(f"{option} must be a positive multiple of 16 (VAE factor 8 x patch 2), got {value}")
        if self.num_frames < 1 or (self.num_frames - 1) % 4:
            raise ConfigError(f"num_frames must be 4k + 1 (1, 5, 9, ..., 33, 81), got {self.num_frames}")
        if self.guidance_scale < 1:
            raise ConfigError(f"guidance_scale must be >= 1 (1 turns CFG off), got {self.guidance_scale}")
        if self.lora_rank < 1 or self.lora_alpha <= 0:
            raise ConfigError(f"lora_rank must be >= 1 and lora_alpha > 0, got {self.lora_rank} and {self.lora_alpha}")
        if not self.lora_target_modules:
            raise ConfigError("lora_target_modules is empty: name at least one module, e.g. to_q")
        if self.max_sequence_length < 1:
            raise ConfigError(f"max_sequence_length must be >= 1, got {self.max_sequence_length}")
        if self.attention_backend is not None:
            try:
                attention_backend(self.attention_backend)
            except ValueError as error:
                raise ConfigError(str(error)) from None
            self.attention_backend = self.attention_backend.lower()  # one spelling per kernel in the run record

    @property
    def shape(self) -> VideoShape:
        return VideoShape(self.height, self.width, self.num_frames)

    def lora(self) -> LoraSpec:
        return LoraSpec(rank=self.lora_rank, alpha=self.lora_alpha, target_modules=tuple(self.lora_target_modules))

    def load_policy(self, device: torch.device, *, with_lora: bool = True) -> WanPolicy:
        policy = WanPolicy.from_pretrained(
            self.model,
            device=device,
            transformer_dtype=DTYPES[self.transformer_dtype],
            text_encoder_dtype=DTYPES[self.text_encoder_dtype],
            lora=self.lora() if with_lora else None,
            max_sequence_length=self.max_sequence_length,
            vae_tiling=self.vae_tiling,
            vae_slicing=self.vae_slicing,
            compile_transformer=self.compile_transformer,
            attention=None if self.attention_backend is None else attention_backend(self.attention_backend),
        )
        policy.negative_prompt = self.negative_prompt
        if self.gradient_checkpointing:
            policy.transformer.enable_gradient_checkpointing()
        return policy


@dataclass
class RunConfig:
    """Where a run writes, how it logs and checkpoints."""

    output_dir: str | None = field(default=None, metadata={"help": "Run directory (checkpoints, samples, logs, final LoRA)."})
    prompts: str | None = field(
        default=None,
        metadata={"help": "Prompt file: .txt (one per line) or .csv with a 'prompt' column; tiny:prompts: the tiny recipes' eight prompts."},
    )
    seed: int = field(default=0, metadata={"help": "Seed of prompts order, initial noise and SDE noise."})
    max_steps: int = field(default=100, metadata={"help": "Optimizer steps (GRPO: one rollout each)."})
    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW learning rate of the LoRA weights."})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay (flow_grpo: 1e-4)."})
    fused_adamw: bool = field(
        default=False,
        metadata={"help": "AdamW as PyTorch's fused kernel instead of the foreach kernel: faster, the same update up "
                          "to float rounding (benchmarks/optimizer_kernels.py), but the optimizer step is a tiny "
                          "share of a Wan step, so off by default."},
    )
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient-norm clip."})
    mixed_precision: Literal["no", "bf16", "fp16"] = field(default="bf16", metadata={"help": "accelerate mixed precision."})
    save_steps: int = field(default=50, metadata={"help": "Checkpoint every N steps (resumable state + LoRA)."})
    sample_steps: int = field(default=50, metadata={"help": "Write sample mp4s every N steps (0: never)."})
    logging_steps: int = field(default=1, metadata={"help": "Log metrics every N steps."})
    report_to: Literal["wandb", "tensorboard", "none"] = field(
        default="wandb", metadata={"help": "Tracker (wandb runs offline unless logged in)."}
    )
    ema_decay: float | None = field(default=None, metadata={"help": "EMA of the LoRA weights (e.g. 0.9); None: off."})
    save_fused: bool = field(default=False, metadata={"help": "Also write the full transformer with LoRA fused in."})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Restart from scratch: remove what an earlier run wrote to output_dir (checkpoints, final/, "
                          "samples, logs, run_config.json, the default pairs/ store); other files are kept."},
    )
    lr_scheduler_type: str = field(
        default="constant",
        metadata={"help": "Learning-rate schedule over max_steps (transformers' get_scheduler): "
                          f"{', '.join(LR_SCHEDULES)}. As there, a warm-up starts at 0, so the first step of a "
                          "warm-up does not move the weights."},
    )
    warmup_steps: int = field(
        default=0,
        metadata={"help": "Optimizer steps of linear warm-up from 0 to learning_rate (a step count, not a ratio)."},
    )
    save_total_limit: int | None = field(
        default=None,
        metadata={"help": "Keep only the newest N checkpoints of this run (older checkpoints/step_* folders are "
                          "deleted after each save); None: keep all."},
    )
    disable_tqdm: bool = field(
        default=False, metadata={"help": "No progress bars (they show on the main process when stderr is a terminal)."}
    )
    push_to_hub: bool = field(
        default=False, metadata={"help": "At the end, upload final/ (the LoRA) to the Hugging Face Hub repo "
                                         "hub_model_id (created if missing; needs a logged-in token)."}
    )
    hub_model_id: str | None = field(default=None, metadata={"help": "Hub repo of push_to_hub: owner/name."})
    hub_private: bool = field(default=True, metadata={"help": "Create the hub repo private (an existing repo keeps "
                                                               "its visibility)."})

    def __post_init__(self) -> None:
        """Every value is checked here, before any model loads; the message names the option and the fix."""
        if self.output_dir is None or self.prompts is None:
            raise ConfigError("output_dir and prompts are required")
        self.prompts = resolve_prompt_file(self.prompts)
        if not Path(self.prompts).is_file():
            raise ConfigError(f"prompts: {self.prompts} is not a file (give a .txt or .csv prompt file)")
        at_least = {"max_steps": 1, "save_steps": 1, "logging_steps": 1, "sample_steps": 0}
        for option, smallest in at_least.items():
            if getattr(self, option) < smallest:
                raise ConfigError(f"{option} must be >= {smallest}, got {getattr(self, option)}")
        if not self.learning_rate > 0:
            raise ConfigError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not self.max_grad_norm > 0:
            raise ConfigError(f"max_grad_norm must be > 0 (it is the gradient-norm clip), got {self.max_grad_norm}")
        if not self.weight_decay >= 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ConfigError(
                f"ema_decay must lie in (0, 1) (e.g. 0.9), or be left unset to turn the EMA off; got {self.ema_decay}"
            )
        self._check_schedule()
        self._check_hub()
        if self.save_total_limit is not None and self.save_total_limit < 1:
            raise ConfigError(f"save_total_limit must be >= 1 (the newest checkpoint is always kept), or unset to keep "
                              f"all; got {self.save_total_limit}")

    def _check_hub(self) -> None:
        if self.push_to_hub and not self.hub_model_id:
            raise ConfigError("push_to_hub needs hub_model_id (the hub repo to upload final/ to, e.g. me/wan-grpo-lora)")
        if self.hub_model_id is not None and not looks_like_hub_id(self.hub_model_id):
            raise ConfigError(f"hub_model_id must be a hub repo id owner/name, got {self.hub_model_id!r}")

    def _check_schedule(self) -> None:
        if self.lr_scheduler_type not in LR_SCHEDULES:
            raise ConfigError(f"lr_scheduler_type {self.lr_scheduler_type!r} is not one of {', '.join(LR_SCHEDULES)}")
        if not 0 <= self.warmup_steps <= self.max_steps:
            raise ConfigError(f"warmup_steps must lie in [0, max_steps = {self.max_steps}], got {self.warmup_steps}")
        if self.warmup_steps and self.lr_scheduler_type == "constant":
            raise ConfigError(f"lr_scheduler_type constant has no warm-up, but warmup_steps is {self.warmup_steps}: "
                              "use constant_with_warmup")


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a .txt (one per non-empty line) or a .csv/.tsv/.jsonl with a ``prompt`` column (or ``tiny:prompts``)."""
    path = Path(resolve_prompt_file(str(path)))
    if not path.is_file():
        raise ConfigError(f"prompt file {path} does not exist")
    if path.suffix.lower() in (".csv", ".tsv"):
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            if "prompt" not in (reader.fieldnames or []):
                raise ConfigError(f"{path} has no 'prompt' column (columns: {reader.fieldnames})")
            prompts = [row["prompt"].strip() for row in reader if (row["prompt"] or "").strip()]
    elif path.suffix.lower() == ".jsonl":
        prompts = [text for _, row in read_records(path).rows if (text := str(row.get("prompt") or "").strip())]
    else:
        prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise ConfigError(f"{path} holds no prompts")
    return prompts
