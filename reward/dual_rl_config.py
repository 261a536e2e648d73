"""The DeScore stage-2 job's settings (``descore reward train`` with ``stage: dual_rl``).

Defaults are the official stage-2 recipe (KlingAIResearch/DeScore ``dual_rl/examples/train.sh`` over its
``examples/config.yaml`` and EasyR1's defaults; docs/descore_stage2.md lists each value and its source).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from .errors import ConfigError
from .generation import GenerationSettings
from .modeling import DEFAULT_LORA_TARGETS
from .rollout_rewards import LENGTH_FORMS, RolloutRewardSettings
from .video import DecodeLimitConfig, VideoSpec



@dataclass
class DualRlConfig(DecodeLimitConfig):
    """Stage 2: GRPO on the judge's CoTs + Bradley–Terry on the ``<Reward>`` head, from a stage-1 checkpoint."""

    stage: Literal["dual_rl"] = field(
        default="dual_rl", metadata={"help": "Which stage `descore reward train` runs: dual_rl (this job)."}
    )
    # ----- data ----------------------------------------------------------------------------------------
    train_data: str | None = field(
        default=None, metadata={"help": "Preference pairs with per-video ground-truth sub-scores (our layout with "
                                        "scores_a/scores_b, or the official stage-2 CSV)."})
    eval_data: str | None = field(default=None, metadata={"help": "Held-out pairs: head accuracy with and without CoT."})
    skip_invalid: bool = field(default=False, metadata={"help": "Skip and count invalid rows instead of failing."})
    probe_videos: bool = field(default=True, metadata={"help": "Open every video before training."})
    # ----- model ---------------------------------------------------------------------------------------
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Stage-1 DeScore checkpoint (merged or adapter format; LoRA is merged in). "
                                        "It is also the frozen KL reference."})
    torch_dtype: Literal["auto", "bfloat16", "float16", "float32"] = field(
        default="bfloat16", metadata={"help": "Dtype of frozen weights and of the final export; trained tensors "
                                              "are float32."})
    attn_implementation: str | None = field(default=None, metadata={"help": "e.g. sdpa or flash_attention_2."})
    bf16: bool = field(default=True, metadata={"help": "bf16 autocast for the forwards."})
    activation_checkpointing: bool = field(default=True, metadata={"help": "Recompute activations in the backward."})
    adaptation: Literal["full", "lora"] = field(
        default="full", metadata={"help": "full: every LLM weight trained (official; vision tower frozen); lora: a "
                                          "fresh LoRA on the LLM projections (reference = adapters off)."})
    lora_rank: int = field(default=64, metadata={"help": "LoRA rank (adaptation: lora)."})
    lora_alpha: int = field(default=128, metadata={"help": "LoRA alpha (adaptation: lora)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout (adaptation: lora)."})
    lora_target_modules: str = field(default=DEFAULT_LORA_TARGETS, metadata={"help": "Regex of LoRA modules."})
    # ----- rollouts ------------------------------------------------------------------------------------
    pairs_per_step: int = field(default=128, metadata={"help": "Pairs per rollout step over all processes "
                                                                "(official rollout_batch_size: 128 pairs = 256 videos)."})
    pairs_per_update: int = field(
        default=4, metadata={"help": "Pairs per optimizer update over all processes. Official global_batch_size 8 "
                                     "counts videos: 8 videos = 4 pairs = 64 rollouts = 32 BT pairs per update, "
                                     "i.e. 32 updates per step."})
    micro_batch_pairs: int = field(
        default=1, metadata={"help": "Index-aligned rollout pairs (A_i, B_i) per forward: 2 sequences each."})
    num_generations: int = field(default=8, metadata={"help": "CoTs per video (the GRPO group; official n = 8)."})
    temperature: float = field(default=1.0, metadata={"help": "Rollout sampling temperature (also divides the "
                                                              "training logits)."})
    top_p: float = field(default=1.0, metadata={"help": "Rollout nucleus sampling."})
    max_new_tokens: int = field(default=4096, metadata={"help": "Longest CoT (official max_response_length)."})
    generation_backend: Literal["hf", "vllm"] = field(
        default="hf", metadata={"help": "hf: generate with the live model; vllm: a colocated vLLM engine."})
    vllm_mode: Literal["colocate"] = field(
        default="colocate", metadata={"help": "vLLM in this process, weights pushed before every rollout "
                                              "(model_name_or_path must then be a merged checkpoint). A vLLM server "
                                              "cannot take the trained weights, so it is not offered here."})
    vllm_max_model_len: int = field(default=10_296, metadata={"help": "vLLM context: prompt (official max 6200) + "
                                                                       "response (4096)."})
    vllm_gpu_memory_utilization: float = field(default=0.6, metadata={"help": "vLLM's GPU share (official 0.6)."})
    # ----- rollout reward ------------------------------------------------------------------------------
    quality_weight: float = field(default=0.7, metadata={"help": "Weight of sub-score agreement with the truth."})
    format_weight: float = field(default=0.1, metadata={"help": "Weight of a parseable <answer> JSON."})
    length_weight: float = field(default=0.2, metadata={"help": "Weight of the length reward."})
    length_form: Literal["official_chars", "paper_tokens"] = field(
        default="official_chars", metadata={"help": "official_chars: the official step function of characters; "
                                                    "paper_tokens: the paper's linear ramp in tokens."})
    length_min: int = field(default=500, metadata={"help": "Length where the length reward starts."})
    length_max: int = field(default=2000, metadata={"help": "Length where the length reward reaches 1."})
    strict_format: bool = field(default=False, metadata={"help": "Also demand the paper's <think></think> block."})
    # ----- objective -----------------------------------------------------------------------------------
    ppo_epochs: int = field(default=1, metadata={"help": "Passes over a step's rollouts."})
    clip_low: float = field(default=0.2, metadata={"help": "PPO ratio clip below 1."})
    clip_high: float = field(default=0.3, metadata={"help": "PPO ratio clip above 1 (clip-higher)."})
    dual_clip: float | None = field(default=3.0, metadata={"help": "Dual-clip c for negative advantages (EasyR1 "
                                                                   "default 3.0); null: off."})
    kl_coef: float = field(default=1e-5, metadata={"help": "Weight of the token-mean k3 KL to the reference."})
    bt_weight: float = field(default=5e-3, metadata={"help": "Weight of the paired Bradley–Terry head loss; 0: off."})
    # ----- optimizer -----------------------------------------------------------------------------------
    learning_rate: float = field(default=1e-6, metadata={"help": "AdamW learning rate (constant schedule)."})
    head_learning_rate: float | None = field(default=None, metadata={"help": "Head lr; null: learning_rate."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1."})
    adam_beta2: float = field(default=0.999, metadata={"help": "AdamW beta2."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clip."})
    max_steps: int = field(default=65, metadata={"help": "Rollout steps (official: 65)."})
    max_consecutive_skipped_steps: int = field(
        default=5, metadata={"help": "Stop after this many steps in a row had every update skipped."})
    # ----- video ---------------------------------------------------------------------------------------
    video_fps: float = field(default=2.0, metadata={"help": "Frames sampled per second."})
    video_min_frames: int = field(default=4, metadata={"help": "Fewest frames per clip."})
    video_max_frames: int = field(default=768, metadata={"help": "Most frames per clip."})
    video_min_pixels: int = field(default=3_136, metadata={"help": "Fewest pixels per frame (official stage 2)."})
    video_max_pixels: int = field(default=307_200, metadata={"help": "Most pixels per frame (official stage 2)."})
    video_max_total_tokens: int = field(default=VideoSpec.max_total_tokens, metadata={"help": "Clip token budget."})
    # ----- run -----------------------------------------------------------------------------------------
    output_dir: str | None = field(default=None, metadata={"help": "Run folder (checkpoints/, final/, record)."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Restart: remove what a stage-2 run wrote."})
    save_steps: int = field(default=1, metadata={"help": "Checkpoint every N steps (official: every step)."})
    eval_steps: int = field(default=5, metadata={"help": "Evaluate on eval_data every N steps (official: 5)."})
    logging_steps: int = field(default=1, metadata={"help": "Log every N steps."})
    seed: int = field(default=1, metadata={"help": "Seed of pair order and rollouts (official: 1)."})
    report_to: Literal["wandb", "tensorboard", "none"] = field(
        default="wandb", metadata={"help": "Tracker: wandb (offline unless logged in), tensorboard or none."})

    def __post_init__(self) -> None:
        if self.train_data is None:
            raise ConfigError("train_data is required: preference pairs with scores_a/scores_b ground truth")
        if self.model_name_or_path is None:
            raise ConfigError("model_name_or_path is required: a stage-1 DeScore checkpoint")
        if self.output_dir is None:
            raise ConfigError("output_dir is required")
        self.decode_limits()
        problems = [message for ok, message in self._checks() if not ok]
        if problems:
            raise ConfigError("invalid stage-2 settings:\n  " + "\n  ".join(problems))

    def _checks(self) -> list[tuple[bool, str]]:
        return [
            (self.stage == "dual_rl", f"stage must be dual_rl for this job, got {self.stage!r}"),
            (self.length_form in LENGTH_FORMS, f"length_form must be one of {LENGTH_FORMS}, got {self.length_form!r}"),
            (self.pairs_per_update >= 1 and self.pairs_per_step % self.pairs_per_update == 0,
             f"pairs_per_step ({self.pairs_per_step}) must be a multiple of pairs_per_update ({self.pairs_per_update})"),
            (self.micro_batch_pairs >= 1, f"micro_batch_pairs must be >= 1, got {self.micro_batch_pairs}"),
            (self.num_generations >= 2, f"num_generations must be >= 2 for group advantages, got {self.num_generations}"),
            (self.temperature > 0, f"temperature must be > 0 (rollouts are sampled), got {self.temperature}"),
            (0 < self.top_p <= 1, f"top_p must lie in (0, 1], got {self.top_p}"),
            (self.max_new_tokens >= 1, f"max_new_tokens must be >= 1, got {self.max_new_tokens}"),
            (self.ppo_epochs >= 1, f"ppo_epochs must be >= 1, got {self.ppo_epochs}"),
            (0 < self.clip_low < 1 and self.clip_high > 0, f"need 0 < clip_low < 1 and clip_high > 0, got "
                                                           f"{self.clip_low} and {self.clip_high}"),
            (self.dual_clip is None or self.dual_clip > 1, f"dual_clip must be > 1 or null, got {self.dual_clip}"),
            (self.kl_coef >= 0 and self.bt_weight >= 0, f"kl_coef and bt_weight must be >= 0, got {self.kl_coef} and "
                                                        f"{self.bt_weight}"),
            (0 < self.learning_rate < math.inf, f"learning_rate must be > 0, got {self.learning_rate}"),
            (self.head_learning_rate is None or self.head_learning_rate > 0,
             f"head_learning_rate must be > 0 or null, got {self.head_learning_rate}"),
            (self.max_grad_norm > 0, f"max_grad_norm must be > 0, got {self.max_grad_norm}"),
            (self.max_steps >= 1, f"max_steps must be >= 1, got {self.max_steps}"),
            (self.max_consecutive_skipped_steps >= 1,
             f"max_consecutive_skipped_steps must be >= 1, got {self.max_consecutive_skipped_steps}"),
            (self.save_steps >= 1 and self.logging_steps >= 1 and self.eval_steps >= 1,
             f"save_steps, logging_steps and eval_steps must be >= 1, got {self.save_steps}, {self.logging_steps}, "
             f"{self.eval_steps}"),
            (self.lora_rank >= 1 and self.lora_alpha > 0 and 0 <= self.lora_dropout < 1,
             f"need lora_rank >= 1, lora_alpha > 0, 0 <= lora_dropout < 1, got {self.lora_rank}, {self.lora_alpha}, "
             f"{self.lora_dropout}"),
        ]

    def rollout_settings(self) -> GenerationSettings:
        """How rollouts are sampled (no repetition penalty, as the official rollouts)."""
        return GenerationSettings(backend=self.generation_backend, max_new_tokens=self.max_new_tokens,
                                  temperature=self.temperature, top_p=self.top_p, top_k=0, repetition_penalty=1.0,
                                  vllm_mode=self.vllm_mode,
                                  max_model_len=self.vllm_max_model_len,
                                  gpu_memory_utilization=self.vllm_gpu_memory_utilization)

    def reward_settings(self) -> RolloutRewardSettings:
        return RolloutRewardSettings(quality_weight=self.quality_weight, format_weight=self.format_weight,
                                     length_weight=self.length_weight, length_form=self.length_form,
                                     length_min=self.length_min, length_max=self.length_max,
                                     strict_format=self.strict_format)

    def video_spec(self, factor: int) -> VideoSpec:
        return VideoSpec(fps=self.video_fps, min_frames=self.video_min_frames, max_frames=self.video_max_frames,
                         min_pixels=self.video_min_pixels, max_pixels=self.video_max_pixels, pixel_factor=factor,
                         max_total_tokens=self.video_max_total_tokens)
