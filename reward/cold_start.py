"""DeScore stage 1 — discriminative cold start (arXiv 2605.05922; docs/descore.md, "Stage 1").

Bradley–Terry training of the ``<Reward>`` head on pre-collected CoTs: LoRA (r 64, α 128, dropout 0.05) on
the LLM projections; vision tower, merger, head and only the ``<Reward>`` embedding row trained; lr 2e-6
constant after 5 % warmup; 32 pairs per optimizer step; 2 epochs (the official ``train.sh`` says 4, its
README and project page 2 — we follow the paper; docs/descore.md, "Where the kit departs"); bf16; activation
checkpointing; per pair, the CoT of both videos is dropped with probability 0.5. Ties are dropped for
``loss: bt`` and used by ``loss: bt_ties`` (Rao–Kupper, k = 5).

Launch: ``descore reward train --config configs/reward/cold_start_qwen3vl_8b.yaml [--key value ...]``,
under ``accelerate launch --config_file configs/accelerate/<engine>.yaml`` for several GPUs.

A run writes its resolved configuration (every field, the sha256 of the data files, library versions, git
commit) to ``output_dir/run_config.json`` and ``final/run_config.json``. Re-running the same command resumes
from the last complete ``checkpoint-*``; a re-run whose configuration differs outside
:data:`RESUME_ALLOWED` stops before any model loads and lists the differences, and ``--overwrite_output_dir
true`` restarts instead (it removes only what a stage-1 run writes).

Precision: with ``torch_dtype: bfloat16`` the frozen weights stay bf16 while every trained tensor is float32
(see :mod:`reward.modeling`); ``bf16: true`` runs the forward under bf16 autocast.
"""

from __future__ import annotations

import functools
import logging
import math
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from transformers import AutoProcessor, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .checkpoint import atomic_directory
from .data import PreferenceData, read_preferences
from .errors import ConfigError
from .losses import bradley_terry_loss, bradley_terry_ties_loss
from .modeling import DEFAULT_LORA_TARGETS, REWARD_TOKEN, DeScoreModel, LoraSettings, pixel_factor
from .pairs import PairCollator, PairDataset
from .prompts import JUDGE_TEMPLATE, read_judge_template, template_sha256
from .run_record import RUN_CONFIG, check_model_source, check_same_run, file_sha256, resolved_config, write_run_config
from .tiny_models import resolve_backbone
from .trainer import DeScoreTrainer, closed_trackers, pairwise_metrics
from .video import DecodeLimitConfig, VideoSpec

logger = logging.getLogger(__name__)

LOSSES = {"bt": bradley_terry_loss, "bt_ties": bradley_terry_ties_loss}
JOB = "reward-train"
# Fields a resumed run may change: how long it trains, and how it logs, evaluates, saves and feeds data (and
# `stage`, which has one value here and is absent from records written before stage 2 existed). Any
# other difference would make the resumed run a mix of two runs.
RESUME_ALLOWED = (
    "stage", "output_dir", "num_train_epochs", "max_steps", "overwrite_output_dir", "resume_from_checkpoint",
    "logging_strategy", "logging_steps", "logging_first_step", "logging_dir", "log_level", "log_level_replica",
    "log_on_each_node", "report_to", "run_name", "project", "disable_tqdm", "skip_memory_metrics",
    "eval_strategy", "eval_steps", "eval_delay", "eval_on_start", "eval_accumulation_steps",
    "per_device_eval_batch_size", "save_strategy", "save_steps", "save_total_limit",
    "dataloader_num_workers", "dataloader_prefetch_factor", "dataloader_persistent_workers",
    "dataloader_pin_memory", "local_rank", "ddp_timeout",
)


@dataclass
class ColdStartConfig(TrainingArguments, DecodeLimitConfig):
    """Stage-1 job: data, model and adaptation fields, plus every ``TrainingArguments`` field.

    Defaults reproduce DeScore stage 1 on Qwen3-VL-8B-Instruct; ``configs/reward/tiny_cold_start.yaml`` runs
    the same code on a tiny model on CPU.
    """

    stage: Literal["cold_start"] = field(
        default="cold_start", metadata={"help": "Which stage `descore reward train` runs: cold_start (this job) or "
                                                "dual_rl (stage 2, reward/dual_rl.py)."})
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
        default="Qwen/Qwen3-VL-8B-Instruct",
        metadata={"help": "Backbone: hub id or local directory; tiny:qwen3-vl / tiny:qwen2.5-vl build (once, cached) a "
                  "tiny random-weight one."},
    )
    torch_dtype: Literal["auto", "bfloat16", "float16", "float32"] = field(
        default="bfloat16",
        metadata={"help": "Dtype of the frozen backbone weights; trained tensors (LoRA, vision tower, <Reward> row, "
                  "head) are always float32."},
    )
    attn_implementation: str | None = field(
        default=None, metadata={"help": "e.g. sdpa or flash_attention_2; None = transformers' default."}
    )
    cot_placement: Literal["assistant", "user"] = field(
        default="assistant",
        metadata={"help": "Where the CoT and <Reward> go: the assistant turn (official stage 2) or the user turn "
                  "(official stage 1). Stored in the checkpoint and used at scoring time."},
    )
    judge_template: str | None = field(
        default=None,
        metadata={"help": "Text file holding the judge template ({prompt} placeholder, one <video> marker, literal "
                  "braces as {{ }}); None = the kit's. Stored in the checkpoint, so scoring uses the same wording. "
                  "Rows with their own instruction (official `problem` column) keep it."},
    )
    # ----- adaptation ----------------------------------------------------------------------------------
    lora_rank: int = field(default=64, metadata={"help": "LoRA rank on the LLM projections."})
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
        default=True,
        metadata={"help": "Write output_dir/final with LoRA merged (self-contained, vLLM-ready), in torch_dtype; "
                  "false keeps the adapter format (float32 trainables, exactly as trained)."},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Restart from scratch: remove what an earlier stage-1 run wrote in output_dir "
                  "(checkpoint-*, final/, run_config.json, wandb/ and runs/ logs); other files are kept."},
    )
    # ----- TrainingArguments defaults changed for stage 1 ---------------------------------------------
    learning_rate: float = field(default=2e-6, metadata={"help": "AdamW learning rate (DeScore: 2e-6)."})
    lr_scheduler_type: str = field(default="constant_with_warmup", metadata={"help": "Learning-rate schedule."})
    warmup_steps: float = field(default=0.05, metadata={"help": "Warmup steps, or a ratio of all steps if < 1."})
    num_train_epochs: float = field(default=2.0, metadata={"help": "Epochs over the training pairs."})
    per_device_train_batch_size: int = field(default=1, metadata={"help": "Pairs per device per micro-step."})
    per_device_eval_batch_size: int = field(default=4, metadata={"help": "Pairs per device per eval step."})
    bf16: bool = field(
        default=True, metadata={"help": "bf16 autocast for the forward pass (on CPU too); weights keep their dtypes."}
    )
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
            raise ConfigError(
                "train_data is required: a preference CSV/JSONL file (a synthetic one for the tiny recipe: "
                "`descore demo --output_dir runs/demo` writes runs/demo/data/train.csv and runs/demo/data/eval.csv)"
            )
        if self.output_dir is None:
            raise ConfigError("output_dir is required")
        if self.remove_unused_columns:
            raise ConfigError("remove_unused_columns must be False: DeScore batches are assembled by PairCollator")
        if self.eval_data is None and self.eval_strategy != "no":
            self.eval_strategy = "no"
        self.decode_limits()  # raises on a bad limit
        self.template()  # raises on a missing file or a malformed template
        problems = value_problems(self)
        if problems:
            raise ConfigError("invalid stage-1 settings:\n  " + "\n  ".join(problems))
        self.model_name_or_path = resolve_backbone(self.model_name_or_path)  # tiny:* -> its cached folder
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

    def template(self) -> str:
        """The judge template text this run trains with."""
        return JUDGE_TEMPLATE if self.judge_template is None else read_judge_template(self.judge_template)

    def lora(self) -> LoraSettings:
        return LoraSettings(
            r=self.lora_rank,
            alpha=self.lora_alpha,
            dropout=self.lora_dropout,
            target_modules=self.lora_target_modules,
            full_modules=tuple(self.full_train_modules),
        )


def value_problems(config: ColdStartConfig) -> list[str]:
    """Every out-of-range value, each with the value and the fix (checked before anything loads)."""
    checks = [
        (0 < config.learning_rate < math.inf, f"learning_rate must be a finite number > 0, got {config.learning_rate}"),
        (config.max_grad_norm is None or config.max_grad_norm >= 0,
         f"max_grad_norm must be >= 0 (0 turns clipping off), got {config.max_grad_norm}"),
        (config.lora_rank >= 1, f"lora_rank must be >= 1, got {config.lora_rank}"),
        (config.lora_alpha > 0, f"lora_alpha must be > 0, got {config.lora_alpha}"),
        (0.0 <= config.lora_dropout < 1.0, f"lora_dropout must lie in [0, 1), got {config.lora_dropout}"),
        (0.0 <= config.cot_drop_prob <= 1.0, f"cot_drop_prob must lie in [0, 1], got {config.cot_drop_prob}"),
        (config.loss != "bt_ties" or config.tie_k > 1, f"tie_k must be > 1 for loss: bt_ties, got {config.tie_k}"),
        (config.num_train_epochs > 0 or config.max_steps > 0,
         f"num_train_epochs ({config.num_train_epochs}) and max_steps ({config.max_steps}) would train 0 steps; "
         "set num_train_epochs > 0 or max_steps > 0"),
        (config.per_device_train_batch_size >= 1,
         f"per_device_train_batch_size must be >= 1, got {config.per_device_train_batch_size}"),
        (config.effective_batch_size is None or config.effective_batch_size >= 1,
         f"effective_batch_size must be >= 1 (or None), got {config.effective_batch_size}"),
        (config.video_fps > 0, f"video_fps must be > 0, got {config.video_fps}"),
        (1 <= config.video_min_frames <= config.video_max_frames,
         f"need 1 <= video_min_frames <= video_max_frames, got {config.video_min_frames} and {config.video_max_frames}"),
        (config.video_min_pixels is None or 0 < config.video_min_pixels <= config.video_max_pixels,
         f"need 0 < video_min_pixels <= video_max_pixels, got {config.video_min_pixels} and {config.video_max_pixels}"),
        (config.video_max_pixels > 0, f"video_max_pixels must be > 0, got {config.video_max_pixels}"),
        (config.video_max_total_tokens > 0, f"video_max_total_tokens must be > 0, got {config.video_max_total_tokens}"),
    ]
    return [message for ok, message in checks if not ok]


def check_sources(config: ColdStartConfig) -> None:
    """The data files and the backbone exist (a missing local model path fails here, not after hub retries)."""
    for key in ("train_data", "eval_data"):
        path = getattr(config, key)
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"{key}: {path} does not exist or is not a file")
    check_model_source(config.model_name_or_path, what="model_name_or_path", ask_hub=True)


def run_record(config: ColdStartConfig) -> dict[str, dict[str, Any]]:
    """The resolved configuration of this run: every field, local paths made absolute (a re-run from another
    folder is compared by what it reads), plus the content digest of each data file (so a file edited in place
    is a different run). Video files are named by path, not hashed."""
    values = config.to_dict()
    for key in ("train_data", "eval_data", "model_name_or_path", "judge_template"):
        if values[key] is not None and Path(values[key]).expanduser().exists():
            values[key] = str(Path(values[key]).expanduser().resolve())
    data = {key: file_sha256(getattr(config, key)) if getattr(config, key) else None for key in ("train_data", "eval_data")}
    template = config.template()
    return resolved_config({"config": values, "data_sha256": data,
                            "judge_template": {"sha256": template_sha256(template), "text": template}})


def written_by_stage1(output_dir: Path) -> list[Path]:
    """What a stage-1 run writes into its output folder (and so what ``overwrite_output_dir`` removes)."""
    patterns = (f"{PREFIX_CHECKPOINT_DIR}-*", "final", ".final.*", RUN_CONFIG, "wandb", "runs")
    return sorted({path for pattern in patterns for path in output_dir.glob(pattern)})


def check_output_dir(config: ColdStartConfig, record: dict[str, dict[str, Any]]) -> None:
    """Refuse, before anything loads, to resume a run recorded with another configuration (or unrecorded
    checkpoints). Read-only, so every process raises the same error together."""
    output_dir = Path(config.output_dir)
    if config.overwrite_output_dir:
        return
    if not check_same_run(output_dir, JOB, record, allowed=RESUME_ALLOWED) and last_complete_checkpoint(output_dir):
        raise ConfigError(
            f"{output_dir} holds checkpoints but no {RUN_CONFIG}, so it cannot be told whether they belong to "
            "this run; use another output_dir, or pass --overwrite_output_dir true to restart it"
        )


def claim_output_dir(config: ColdStartConfig, record: dict[str, dict[str, Any]]) -> None:
    """Just before training: the main process clears the folder (``overwrite_output_dir``) and writes the
    run record while the other processes wait. Done late so that a run failing on bad data records nothing."""
    output_dir = Path(config.output_dir)
    with config.main_process_first(local=False, desc="preparing the output folder"):
        if config.process_index == 0:
            if config.overwrite_output_dir:
                for path in written_by_stage1(output_dir):
                    logger.info("overwrite_output_dir: removing %s", path)
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
            output_dir.mkdir(parents=True, exist_ok=True)
            write_run_config(output_dir, JOB, record)


def _load_pairs(path: str, config: ColdStartConfig) -> PreferenceData:
    data = read_preferences(
        path,
        skip_invalid=config.skip_invalid,
        reserved_tokens=(REWARD_TOKEN,),
        probe_videos=config.probe_videos,
        limits=config.decode_limits(),
    )
    if config.loss == "bt":
        ties = sum(pair.label == 0 for pair in data.pairs)
        if ties:
            logger.info("%s: dropping %d tied pair(s) (loss: bt has no tie likelihood)", path, ties)
        data = replace(data, pairs=[pair for pair in data.pairs if pair.label != 0])
    if not data.pairs:
        raise ConfigError(f"{path}: no usable pairs left")
    return data


def check_enough_pairs(path: str, pairs: int, *, config: ColdStartConfig) -> None:
    """At least one optimizer step's worth of pairs (otherwise the Trainer would quietly take a partial step)."""
    per_step = config.per_device_train_batch_size * config.world_size * config.gradient_accumulation_steps
    if pairs < per_step:
        raise ConfigError(
            f"train_data {path}: {pairs} usable pair(s), fewer than one optimizer step takes ({per_step} = "
            f"per_device_train_batch_size x processes x gradient_accumulation_steps); add pairs or lower "
            "effective_batch_size"
        )


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

    ``callbacks`` are extra ``TrainerCallback``s (early stopping, custom logging, ...). Trackers the run
    opens (wandb) are closed when it returns or fails, so a later job in the same process gets its own run.
    """
    check_sources(config)
    record = run_record(config)
    check_output_dir(config, record)
    set_seed(config.seed)
    train = _load_pairs(config.train_data, config)
    check_enough_pairs(config.train_data, len(train.pairs), config=config)
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
        judge_template=config.template(),
    )
    trainer = _build_trainer(config, model, train=train, evaluation=evaluation, spec=spec, callbacks=callbacks)
    claim_output_dir(config, record)
    with closed_trackers(config.report_to):
        return _train_and_save(trainer, config, model=model, record=record)


def _build_trainer(
    config: ColdStartConfig,
    model: DeScoreModel,
    *,
    train: PreferenceData,
    evaluation: PreferenceData | None,
    spec: VideoSpec,
    callbacks: list[TrainerCallback] | None,
) -> DeScoreTrainer:
    eval_sets = None
    if evaluation is not None:
        datasets = functools.partial(PairDataset, skip_invalid=config.skip_invalid, limits=config.decode_limits())
        eval_sets = {"no_cot": datasets(evaluation.pairs, spec, cot_mode="drop")}
        if all(pair.has_cot for pair in evaluation.pairs):
            eval_sets["cot"] = datasets(evaluation.pairs, spec, cot_mode="keep")
    pair_loss = LOSSES[config.loss]
    if config.loss == "bt_ties":
        pair_loss = functools.partial(pair_loss, k=config.tie_k)
    training_info = {
        "stage": "cold_start",
        "train_data": str(config.train_data),
        "train_pairs": len(train),
        "skipped_rows": len(train.skipped),
        "duplicate_pairs": len(train.warnings.duplicates),
        "contradictory_pairs": len(train.warnings.contradictions),
        "loss": config.loss,
        "cot_drop_prob": config.cot_drop_prob,
    }
    return DeScoreTrainer(
        model=model,
        args=config,
        train_dataset=PairDataset(
            train.pairs,
            spec,
            cot_mode="random",
            cot_drop_prob=config.cot_drop_prob,
            seed=config.seed,
            skip_invalid=config.skip_invalid,
            limits=config.decode_limits(),
        ),
        eval_dataset=eval_sets,
        data_collator=PairCollator(model.processor, model.reward_token, config.cot_placement, model.judge_template),
        compute_metrics=pairwise_metrics,
        pair_loss=pair_loss,
        training_info=training_info,
        callbacks=callbacks,
    )


def _train_and_save(
    trainer: DeScoreTrainer, config: ColdStartConfig, *, model: DeScoreModel, record: dict[str, dict[str, Any]]
) -> dict[str, float]:
    """Train (resuming from the last complete checkpoint), evaluate, and write ``final/`` with the run record."""
    checkpoint = last_complete_checkpoint(Path(config.output_dir))
    if checkpoint is not None:
        logger.info("resuming from %s", checkpoint)
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    metrics = trainer.evaluate() if trainer.eval_dataset else {}
    final = Path(config.output_dir) / "final"
    training = {**trainer.training_info, "global_step": trainer.state.global_step}
    if _parameters_are_sharded(trainer):
        # Every rank joins the gather; the result is adapter-format (merge later with `descore reward export`).
        trainer.save_model(str(final))
        if trainer.args.should_save:
            write_run_config(final, JOB, record)
    elif trainer.args.should_save:
        if config.merge_final:
            model.merge_lora_()
        with atomic_directory(final) as staging:
            model.save_pretrained(staging, training=training)
            write_run_config(staging, JOB, record)
    trainer.accelerator.wait_for_everyone()
    return metrics


def _parameters_are_sharded(trainer: DeScoreTrainer) -> bool:
    """FSDP and DeepSpeed ZeRO-3 shard the weights: only a collective gather can save them."""
    if trainer.is_fsdp_enabled:
        return True
    plugin = trainer.accelerator.state.deepspeed_plugin if trainer.is_deepspeed_enabled else None
    return plugin is not None and plugin.zero_stage == 3
