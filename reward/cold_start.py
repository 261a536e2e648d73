"""DeScore stage 1 — discriminative cold start (reference/descore.md §3).

Bradley–Terry training of the ``<Reward>`` head on pre-collected CoTs: LoRA (r 64, α 128, dropout 0.05) on
the LLM projections; vision tower, merger, head and only the ``<Reward>`` embedding row trained; lr 2e-6
constant after 5 % warmup; 32 pairs per optimizer step; 2 epochs (the official ``train.sh`` says 4, its
README and project page 2 — we follow the paper, §9 #5); bf16; activation checkpointing; per pair, the CoT of
both videos is dropped with probability 0.5. Ties are dropped for ``loss: bt`` and used by ``loss: bt_ties``
(Rao–Kupper, k = 5).

Launch: ``descore reward train --config configs/reward/cold_start_qwen3vl_8b.yaml [--key value ...]``,
under ``accelerate launch --config_file configs/accelerate/<engine>.yaml`` for several GPUs. Re-running the
same command resumes from the last complete ``checkpoint-*`` in ``output_dir``.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from transformers import AutoProcessor, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .data import PreferenceData, read_preferences
from .errors import ConfigError
from .losses import bradley_terry_loss, bradley_terry_ties_loss
from .modeling import DEFAULT_LORA_TARGETS, REWARD_TOKEN, DeScoreModel, LoraSettings, pixel_factor, save_descore
from .pairs import PairCollator, PairDataset
from .trainer import DeScoreTrainer, pairwise_metrics
from .video import VideoSpec

logger = logging.getLogger(__name__)

LOSSES = {"bt": bradley_terry_loss, "bt_ties": bradley_terry_ties_loss}


@dataclass
class ColdStartConfig(TrainingArguments):
    """Stage-1 job: data, model and adaptation fields, plus every ``TrainingArguments`` field.

    Defaults reproduce DeScore stage 1 on Qwen3-VL-8B-Instruct; ``configs/reward/tiny_cold_start.yaml`` runs
    the same code on a tiny model on CPU.
    """

    # ----- data ----------------------------------------------------------------------------------------
    train_data: str | None = field(default=None, metadata={"help": "Preference CSV/JSONL (see README, 'Data format')."})
    eval_data: str | None = field(default=None, metadata={"help": "Held-out preference file for pairwise accuracy."})
    skip_invalid: bool = field(
        default=False, metadata={"help": "Skip and count invalid rows and unreadable videos instead of failing."}
    )
    probe_videos: bool = field(
        default=True, metadata={"help": "Open every video before training to catch corrupt or empty files early."}
    )
    # ----- model ---------------------------------------------------------------------------------------
    model_name_or_path: str = field(
        default="Qwen/Qwen3-VL-8B-Instruct", metadata={"help": "Backbone: hub id or local directory."}
    )
    torch_dtype: Literal["auto", "bfloat16", "float16", "float32"] = field(
        default="bfloat16", metadata={"help": "Backbone weight dtype."}
    )
    attn_implementation: str | None = field(
        default=None, metadata={"help": "e.g. sdpa or flash_attention_2; None = transformers' default."}
    )
    cot_placement: Literal["assistant", "user"] = field(
        default="assistant",
        metadata={"help": "Where the CoT and <Reward> go: the assistant turn (official stage 2) or the user turn "
                  "(official stage 1). Stored in the checkpoint and used at scoring time."},
    )
    # ----- adaptation ----------------------------------------------------------------------------------
    lora_r: int = field(default=64, metadata={"help": "LoRA rank on the LLM projections."})
    lora_alpha: int = field(default=128, metadata={"help": "LoRA alpha (scale alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: str = field(
        default=DEFAULT_LORA_TARGETS, metadata={"help": "Regex of the modules that get LoRA (the LLM only)."}
    )
    full_train_modules: list[str] = field(
        default_factory=lambda: ["visual"],
        metadata={"help": "Modules trained in full (default: the vision tower with its merger)."},
    )
    # ----- objective -----------------------------------------------------------------------------------
    loss: Literal["bt", "bt_ties"] = field(
        default="bt", metadata={"help": "bt: Bradley–Terry, ties dropped; bt_ties: Rao–Kupper with ties."}
    )
    tie_k: float = field(default=5.0, metadata={"help": "Rao–Kupper tie parameter (VideoAlign uses 5)."})
    cot_drop_prob: float = field(
        default=0.5, metadata={"help": "Per pair, probability of dropping both CoTs (DeScore: 0.5)."}
    )
    effective_batch_size: int | None = field(
        default=32,
        metadata={"help": "Pairs per optimizer step over all processes; sets gradient_accumulation_steps from "
                  "the world size. None keeps gradient_accumulation_steps as given."},
    )
    # ----- video contract ------------------------------------------------------------------------------
    video_fps: float = field(default=2.0, metadata={"help": "Frames sampled per second."})
    video_min_frames: int = field(default=4, metadata={"help": "Fewest frames sampled per clip."})
    video_max_frames: int = field(default=768, metadata={"help": "Most frames sampled per clip."})
    video_min_pixels: int | None = field(
        default=None, metadata={"help": "Fewest pixels per frame; None = 128 merged tokens (qwen-vl-utils)."}
    )
    video_max_pixels: int = field(default=200_704, metadata={"help": "Most pixels per frame (DeScore: 448²)."})
    video_max_total_tokens: int = field(
        default=VideoSpec.max_total_tokens, metadata={"help": "Token budget of a whole clip (qwen-vl-utils)."}
    )
    # ----- output --------------------------------------------------------------------------------------
    merge_final: bool = field(
        default=True, metadata={"help": "Write output_dir/final with LoRA merged (self-contained, vLLM-ready)."}
    )
    # ----- TrainingArguments defaults changed for stage 1 ---------------------------------------------
    learning_rate: float = field(default=2e-6, metadata={"help": "AdamW learning rate (DeScore: 2e-6)."})
    lr_scheduler_type: str = field(default="constant_with_warmup", metadata={"help": "Learning-rate schedule."})
    warmup_steps: float = field(default=0.05, metadata={"help": "Warmup steps, or a ratio of all steps if < 1."})
    num_train_epochs: float = field(default=2.0, metadata={"help": "Epochs over the training pairs."})
    per_device_train_batch_size: int = field(default=1, metadata={"help": "Pairs per device per micro-step."})
    per_device_eval_batch_size: int = field(default=4, metadata={"help": "Pairs per device per eval step."})
    bf16: bool = field(default=True, metadata={"help": "bf16 mixed precision."})
    activation_checkpointing: bool | None = field(default=True, metadata={"help": "Recompute activations."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N steps (or a ratio if < 1)."})
    eval_strategy: str = field(default="steps", metadata={"help": "When to evaluate (no, steps, epoch)."})
    eval_steps: float | None = field(default=0.1, metadata={"help": "Evaluate every N steps (or a ratio if < 1)."})
    save_steps: float = field(default=0.5, metadata={"help": "Checkpoint every N steps (or a ratio if < 1)."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Must stay False: batches are built here."})
    report_to: None | str | list[str] = field(
        default="wandb", metadata={"help": "Trackers: wandb (offline unless logged in), tensorboard, none."}
    )

    def __post_init__(self) -> None:
        if self.train_data is None:
            raise ConfigError("train_data is required: a preference CSV/JSONL file")
        if self.output_dir is None:
            raise ConfigError("output_dir is required")
        if self.remove_unused_columns:
            raise ConfigError("remove_unused_columns must be False: DeScore batches are assembled by PairCollator")
        if self.eval_data is None and self.eval_strategy != "no":
            self.eval_strategy = "no"
        if not 0.0 <= self.cot_drop_prob <= 1.0:
            raise ConfigError(f"cot_drop_prob must lie in [0, 1], got {self.cot_drop_prob}")
        if self.loss == "bt_ties" and self.tie_k <= 1:
            raise ConfigError(f"tie_k must be > 1 for loss: bt_ties, got {self.tie_k}")
        super().__post_init__()
        if self.effective_batch_size is not None:
            per_step = self.per_device_train_batch_size * self.world_size
            if self.effective_batch_size % per_step:
                raise ConfigError(
                    f"effective_batch_size ({self.effective_batch_size}) must be divisible by "
                    f"per_device_train_batch_size ({self.per_device_train_batch_size}) x world size "
                    f"({self.world_size}) = {per_step}"
                )
            self.gradient_accumulation_steps = self.effective_batch_size // per_step

    def video_spec(self, factor: int) -> VideoSpec:
        return VideoSpec(
            fps=self.video_fps,
            min_frames=self.video_min_frames,
            max_frames=self.video_max_frames,
            min_pixels=self.video_min_pixels if self.video_min_pixels is not None else 128 * factor * factor,
            max_pixels=self.video_max_pixels,
            pixel_factor=factor,
            max_total_tokens=self.video_max_total_tokens,
        )

    def lora(self) -> LoraSettings:
        return LoraSettings(
            r=self.lora_r,
            alpha=self.lora_alpha,
            dropout=self.lora_dropout,
            target_modules=self.lora_target_modules,
            full_modules=tuple(self.full_train_modules),
        )


def _load_pairs(path: str, config: ColdStartConfig) -> PreferenceData:
    data = read_preferences(
        path, skip_invalid=config.skip_invalid, reserved_tokens=(REWARD_TOKEN,), probe_videos=config.probe_videos
    )
    if config.loss == "bt":
        ties = sum(pair.label == 0 for pair in data.pairs)
        if ties:
            logger.info("%s: dropping %d tied pair(s) (loss: bt has no tie likelihood)", path, ties)
        data = replace(data, pairs=[pair for pair in data.pairs if pair.label != 0])
    if not data.pairs:
        raise ConfigError(f"{path}: no usable pairs left")
    return data


def last_complete_checkpoint(output_dir: Path) -> Path | None:
    """The newest ``checkpoint-N`` whose ``trainer_state.json`` (written last) exists."""
    complete = [
        path
        for path in output_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*")
        if path.name.split("-")[-1].isdigit() and (path / "trainer_state.json").is_file()
    ]
    return max(complete, key=lambda path: int(path.name.split("-")[-1]), default=None)


def run(config: ColdStartConfig, callbacks: list[TrainerCallback] | None = None) -> dict[str, float]:
    """Train stage 1 and write ``output_dir/final``; returns the final evaluation metrics (if any).

    ``callbacks`` are extra ``TrainerCallback``s (early stopping, custom logging, ...).
    """
    set_seed(config.seed)
    train = _load_pairs(config.train_data, config)
    evaluation = _load_pairs(config.eval_data, config) if config.eval_data else None
    processor = AutoProcessor.from_pretrained(config.model_name_or_path)
    spec = config.video_spec(pixel_factor(processor))
    model = DeScoreModel.from_base(
        config.model_name_or_path,
        video_spec=spec,
        cot_placement=config.cot_placement,
        lora=config.lora(),
        dtype=config.torch_dtype,
        attn_implementation=config.attn_implementation,
    )
    collator = PairCollator(model.processor, model.reward_token, config.cot_placement)
    eval_sets = None
    if evaluation is not None:
        eval_sets = {"no_cot": PairDataset(evaluation.pairs, spec, cot_mode="drop", skip_invalid=config.skip_invalid)}
        if all(pair.has_cot for pair in evaluation.pairs):
            eval_sets["cot"] = PairDataset(evaluation.pairs, spec, cot_mode="keep", skip_invalid=config.skip_invalid)
    pair_loss = LOSSES[config.loss]
    if config.loss == "bt_ties":
        pair_loss = functools.partial(pair_loss, k=config.tie_k)
    training_info = {
        "stage": "cold_start",
        "train_data": str(config.train_data),
        "train_pairs": len(train),
        "skipped_rows": len(train.skipped),
        "loss": config.loss,
        "cot_drop_prob": config.cot_drop_prob,
    }
    trainer = DeScoreTrainer(
        model=model,
        args=config,
        train_dataset=PairDataset(
            train.pairs,
            spec,
            cot_mode="random",
            cot_drop_prob=config.cot_drop_prob,
            seed=config.seed,
            skip_invalid=config.skip_invalid,
        ),
        eval_dataset=eval_sets,
        data_collator=collator,
        compute_metrics=pairwise_metrics,
        pair_loss=pair_loss,
        training_info=training_info,
        callbacks=callbacks,
    )
    checkpoint = last_complete_checkpoint(Path(config.output_dir))
    if checkpoint is not None:
        logger.info("resuming from %s", checkpoint)
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    metrics = trainer.evaluate() if eval_sets else {}
    final = Path(config.output_dir) / "final"
    if _parameters_are_sharded(trainer):
        # Every rank joins the gather; the result is adapter-format (merge later with `descore reward export`).
        trainer.save_model(str(final))
    elif trainer.args.should_save:
        if config.merge_final:
            model.merge_lora_()
        save_descore(model, final, training={**training_info, "global_step": trainer.state.global_step})
    trainer.accelerator.wait_for_everyone()
    return metrics


def _parameters_are_sharded(trainer: DeScoreTrainer) -> bool:
    """FSDP and DeepSpeed ZeRO-3 shard the weights: only a collective gather can save them."""
    if trainer.is_fsdp_enabled:
        return True
    plugin = trainer.accelerator.state.deepspeed_plugin if trainer.is_deepspeed_enabled else None
    return plugin is not None and plugin.zero_stage == 3
