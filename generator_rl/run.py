"""Run plumbing shared by the generator jobs: setting a training run up and down, sample videos (stable
per-sample seeds and the permuted data order live in :mod:`reward.seeds`).

A run knows what it is. Before any model loads, ``start_run`` resolves the job's configuration (every field,
the sha256 of the prompt file) and compares it with the ``run_config.json`` an earlier run left in
``output_dir``: the same configuration resumes from the newest checkpoint, a different one stops with a
:class:`~reward.run_record.RunMismatchError` listing the differences (fields in :data:`RESUMABLE_CHANGES`
may change), and ``overwrite_output_dir`` restarts from scratch, removing only what a run writes
(:data:`RUN_OUTPUTS`). On resume, append-only logs are cut back to the checkpoint's step, so a step that is
trained again is logged once.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, ProjectConfiguration, set_seed
from transformers import get_scheduler

from reward.base import check_reward_entry
from reward.checkpoint import atomic_file
from reward.errors import ConfigError, DataError
from reward.run_record import (
    RUN_CONFIG, RunMismatchError, check_model_source, check_same_run, file_sha256, resolved_config, write_run_config,
)
from reward.video import write_video

from .checkpoint import (
    CHECKPOINTS, FINAL, RunState, export_final, latest_checkpoint, lora_state_dict, refuse_pickled_state,
    register_checkpoint_hooks,
)
from .config import read_prompts
from .policy import WAN_FPS, WanPolicy
from .rewards import RewardMix, RewardTerm

logger = logging.getLogger(__name__)

ROLLOUTS = "rollouts.jsonl"
EVAL_LOG = "eval.jsonl"  # held-out evaluations (generator_rl/evaluation.py), which also writes eval/ and best/
# Everything a generator run writes into its output_dir; overwrite_output_dir removes these and nothing else.
RUN_OUTPUTS = (CHECKPOINTS, FINAL, "samples", "logs", "wandb", "pairs", ROLLOUTS, RUN_CONFIG, "eval", EVAL_LOG,
               "best")
# Logs that grow by one record per step ({"step": N, ...} per line): cut back to the checkpoint on resume.
APPEND_ONLY_LOGS = (ROLLOUTS, EVAL_LOG)
# Fields a resumed run may change: how long it trains, how it logs and how fast it runs (compiled blocks and the
# attention kernel change results by float rounding only), not what it trains. The output folder itself may
# move (the run is the folder).
RESUMABLE_CHANGES = ("max_steps", "save_steps", "sample_steps", "logging_steps", "report_to", "overwrite_output_dir",
                     "output_dir", "save_total_limit", "disable_tqdm", "overlap_scoring", "push_to_hub", "hub_model_id",
                     "hub_private", "compile_transformer", "attention_backend", "fused_adamw")
# Learning-rate schedules that do not depend on max_steps: only with these may a resumed run train longer.
SCHEDULES_WITHOUT_HORIZON = ("constant", "constant_with_warmup", "inverse_sqrt")


@dataclass
class TrainingRun:
    """Everything a generator trainer works with, set up identically for GRPO and Flow-DPO."""

    run_dir: Path
    accelerator: Accelerator
    policy: WanPolicy
    model: torch.nn.Module  # the transformer as prepared by accelerate (DDP-wrapped on several processes)
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler  # stepped once per applied update
    state: RunState
    ema: Any  # diffusers EMAModel of the LoRA weights, or None
    rewards: RewardMix | None  # None: a job that ranks nothing (Flow-DPO on given pairs)
    prompts: list[str]
    job: str
    record: dict[str, dict[str, Any]]  # the resolved configuration written to run_config.json

    @property
    def learning_rate(self) -> float:
        """The learning rate of the step being trained (log it as ``train/learning_rate``)."""
        return self.lr_scheduler.get_last_lr()[0]

    def after_optimizer_step(self, step: int) -> None:
        if self.ema is not None:
            self.ema.step(self.policy.trainable_parameters())
        self.lr_scheduler.step()
        self.state.step = step + 1

    def after_skipped_step(self, step: int) -> None:
        """A skipped step moves the data position on but leaves the weights, the EMA and the learning-rate
        schedule as they were (as in transformers' Trainer, the schedule counts applied updates)."""
        self.state.step = step + 1


def start_run(
    policy_args: Any, run_args: Any, reward_terms: list[RewardTerm], *, job: str, project: str, config: dict[str, Any],
    eval_prompts: Sequence[str] = (),
) -> TrainingRun:
    """Check that ``output_dir`` is this run's (before any model loads), then the accelerator and trackers,
    the policy with cached prompts, rewards, AdamW on the LoRA weights, the EMA, checkpoint hooks, and — if
    ``output_dir`` holds a checkpoint — everything restored from the newest one. ``eval_prompts`` (held-out
    prompts) are encoded with the training prompts, before the text encoder is dropped. If setting up fails, the
    trackers are closed again."""
    run_dir = Path(run_args.output_dir)
    for term in reward_terms:
        check_reward_entry(term.entry)  # a misspelt reward or a missing checkpoint fails before Wan loads
    check_model_source(policy_args.model, what="model", ask_hub=True)
    record = run_record(config, prompts=run_args.prompts)
    accelerator = new_accelerator(run_args)
    claim_output_dir(accelerator, run_dir, job=job, record=record, overwrite=run_args.overwrite_output_dir,
                     resumable=resumable_changes(run_args.lr_scheduler_type))
    start_trackers(accelerator, run_args, project=project, record=record)
    try:
        set_seed(run_args.seed)
        prompts = read_prompts(run_args.prompts)
        policy = policy_args.load_policy(accelerator.device)
        policy.cache_prompts([*prompts, *eval_prompts])
        policy.offload_text_encoder()
        rewards = RewardMix(reward_terms) if reward_terms else None
        optimizer = torch.optim.AdamW(
            policy.trainable_parameters(), lr=run_args.learning_rate, betas=(0.9, 0.999),
            weight_decay=run_args.weight_decay, eps=1e-8, fused=run_args.fused_adamw or None,
            foreach=None if run_args.fused_adamw else True,
        )
        model, optimizer = accelerator.prepare(policy.transformer, optimizer)
        # Not prepared by accelerate, which would step it once per process; its state is JSON in our hooks.
        lr_scheduler = get_scheduler(run_args.lr_scheduler_type, optimizer, num_warmup_steps=run_args.warmup_steps,
                                     num_training_steps=run_args.max_steps)
        policy.runner = model
        state = RunState()
        ema = None
        if run_args.ema_decay is not None:
            from diffusers.training_utils import EMAModel

            ema = EMAModel(policy.trainable_parameters(), decay=run_args.ema_decay)  # float32 like the LoRA
        register_checkpoint_hooks(accelerator, policy, state, ema, lr_scheduler)
        checkpoint = latest_checkpoint(run_dir)
        if checkpoint is not None:
            logger.info("resuming from %s", checkpoint)
            refuse_pickled_state(checkpoint)
            accelerator.load_state(str(checkpoint))
        if accelerator.is_main_process:
            for name in APPEND_ONLY_LOGS:
                truncate_log(run_dir / name, before_step=state.step)
        accelerator.wait_for_everyone()
    except BaseException:
        close_run(accelerator)
        raise
    return TrainingRun(run_dir, accelerator, policy, model, optimizer, lr_scheduler, state, ema, rewards, prompts, job,
                       record)


@contextmanager
def training_run(
    policy_args: Any, run_args: Any, reward_terms: list[RewardTerm], *, job: str, project: str, config: dict[str, Any],
    eval_prompts: Sequence[str] = (),
) -> Iterator[TrainingRun]:
    """:func:`start_run` as a context manager: a run that raises still closes its trackers, so the next job in
    the same process (the demo, a notebook, a test session) logs to a run of its own. A run that finishes
    closes them in :func:`finish_run`."""
    run = start_run(policy_args, run_args, reward_terms, job=job, project=project, config=config,
                    eval_prompts=eval_prompts)
    try:
        yield run
    except BaseException:
        close_run(run.accelerator)
        raise


def finish_run(run: TrainingRun, *, fused: bool) -> Path:
    """Swap the EMA weights in (if any), export ``final/`` from the main process, close the trackers and, with
    ``push_to_hub``, upload ``final/`` from the main process (after the trackers are closed, so a failed upload
    leaves a finished run whose ``final/`` can be pushed again)."""
    run.accelerator.wait_for_everyone()
    if run.ema is not None:
        run.ema.copy_to(run.policy.trainable_parameters())
    final = run.run_dir / FINAL
    lora = lora_state_dict(run.policy)  # on every rank: a gather under FSDP2
    if run.accelerator.is_main_process:
        export_final(run.policy, run.run_dir, fused=fused, job=run.job, config=run.record, lora=lora)
    close_run(run.accelerator)
    hub = run.record["run"]
    if hub.get("push_to_hub") and run.accelerator.is_main_process:
        push_final(final, repo_id=hub["hub_model_id"], private=hub["hub_private"])
    return final


def push_final(final: Path, *, repo_id: str, private: bool) -> str:
    """Create the hub model repo ``repo_id`` if it does not exist (an existing one keeps its visibility) and
    upload the files of ``final/`` to its main branch; returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    commit = api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=str(final),
                               commit_message="Upload LoRA trained with descore")
    logger.info("pushed %s to https://huggingface.co/%s", final, repo_id)
    return str(getattr(commit, "commit_url", commit))


def run_record(config: Mapping[str, Any], *, prompts: str | Path) -> dict[str, dict[str, Any]]:
    """The resolved configuration of a generator run (``{group: {field: value}}``), with the sha256 of the
    prompt file under ``run.prompts_sha256``: the same path with other prompts is another run."""
    record = resolved_config(config)
    record["run"]["prompts_sha256"] = file_sha256(prompts)
    return record


def resumable_changes(lr_scheduler_type: str) -> tuple[str, ...]:
    """:data:`RESUMABLE_CHANGES`, less ``max_steps`` when the learning-rate schedule is stretched over it (a
    resumed run with another ``max_steps`` would follow a schedule no uninterrupted run follows)."""
    if lr_scheduler_type in SCHEDULES_WITHOUT_HORIZON:
        return RESUMABLE_CHANGES
    return tuple(name for name in RESUMABLE_CHANGES if name != "max_steps")


def claim_output_dir(accelerator: Accelerator, run_dir: Path, *, job: str, record: dict[str, dict[str, Any]],
                     overwrite: bool, resumable: tuple[str, ...] = RESUMABLE_CHANGES) -> None:
    """Make ``run_dir`` this run's: with ``overwrite``, remove an earlier run's outputs; then refuse a recorded
    run with another configuration, or a run's outputs without a record; then write ``run_config.json``.
    Every process checks (they read the same file, so all raise together); the main process writes."""
    if overwrite and accelerator.is_main_process:
        remove_run_outputs(run_dir, keep=_named_folders(record))
    accelerator.wait_for_everyone()
    if not check_same_run(run_dir, job, record, allowed=resumable):
        leftovers = [name for name in (CHECKPOINTS, FINAL, ROLLOUTS) if (run_dir / name).exists()]
        if leftovers:
            raise RunMismatchError(
                f"{run_dir} holds {', '.join(leftovers)} of a run without {RUN_CONFIG}, so it cannot tell whether "
                "that run is this one. Use another output folder, or pass --overwrite_output_dir true to restart."
            )
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_run_config(run_dir, job, record)
    accelerator.wait_for_everyone()


def _named_folders(record: Mapping[str, Mapping[str, Any]]) -> set[Path]:
    """Folders the configuration names explicitly (e.g. a reused ``pair_dir``): an overwrite keeps them."""
    return {
        Path(value).resolve()
        for values in record.values() for name, value in values.items()
        if name.endswith("_dir") and name != "output_dir" and isinstance(value, str)
    }


def remove_run_outputs(run_dir: Path, *, keep: set[Path] = frozenset()) -> list[str]:
    """Delete what a generator run writes into ``run_dir`` (:data:`RUN_OUTPUTS` and leftover staging folders
    of ``final/``), except paths in ``keep``; any other file stays. Returns the names removed."""
    removed = []
    for path in [*(run_dir / name for name in RUN_OUTPUTS), *run_dir.glob(f".{FINAL}.*")]:
        if not (path.exists() or path.is_symlink()) or path.resolve() in keep:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
        removed.append(path.name)
    if removed:
        logger.info("overwrite_output_dir: removed %s from %s", ", ".join(removed), run_dir)
    return removed


def truncate_log(path: Path, *, before_step: int) -> int:
    """Keep only the records with ``step < before_step`` of a JSONL log, replacing the file atomically; a last
    line cut short by a kill is dropped too. Returns the number of lines dropped."""
    if not path.is_file():
        return 0
    lines = path.read_bytes().split(b"\n")
    torn = lines.pop()  # b"" when the file ends with a newline
    kept = []
    for number, line in enumerate(lines, start=1):
        try:
            step = json.loads(line)["step"]
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
            raise DataError(f"{path}:{number}: not a JSON record with a 'step' ({error})") from error
        if step < before_step:
            kept.append(line)
    dropped = len(lines) - len(kept) + bool(torn)
    if dropped:
        with atomic_file(path, "wb") as handle:
            handle.write(b"".join(line + b"\n" for line in kept))
        logger.info("%s: dropped %d line(s) from step %d on (they are trained again)", path, dropped, before_step)
    return dropped


def new_accelerator(run_args: Any) -> Accelerator:
    """An accelerator for ``run_args`` (mixed precision, project folder under ``output_dir``), no trackers yet."""
    run_dir = Path(run_args.output_dir)
    accelerator = Accelerator(
        mixed_precision=run_args.mixed_precision,
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "logs")),
        log_with=None if run_args.report_to == "none" else run_args.report_to,
        # Without a GPU, cpu=True is what makes accelerate join a torchrun group (gloo) instead of running alone.
        cpu=not torch.cuda.is_available(),
    )
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if accelerator.num_processes != launched:
        raise RuntimeError(
            f"launched with WORLD_SIZE={launched} but accelerate sees {accelerator.num_processes} process(es); "
            "the processes would train independently — check the launcher and the accelerate config"
        )
    asks_fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"  # set by an FSDP accelerate config
    if asks_fsdp and accelerator.distributed_type != DistributedType.FSDP:
        raise ConfigError(
            f"the accelerate config asks for FSDP but accelerate runs {accelerator.distributed_type.value} here: "
            "its FSDP needs accelerator devices (GPUs), and without them the model would train unsharded"
        )
    return accelerator


def start_trackers(
    accelerator: Accelerator, run_args: Any, *, project: str, record: Mapping[str, Mapping[str, Any]]
) -> None:
    """Trackers named by ``report_to`` (wandb offline by default, in ``output_dir``) with the run's config."""
    if run_args.report_to == "none":
        return
    Path(run_args.output_dir).mkdir(parents=True, exist_ok=True)
    flat = {f"{group}.{key}": _scalar(value) for group, values in record.items() for key, value in values.items()}
    init = {"wandb": {"dir": str(run_args.output_dir)}} if run_args.report_to == "wandb" else {}
    accelerator.init_trackers(project, config=flat, init_kwargs=init)


def make_accelerator(run_args: Any, *, project: str, config: dict[str, Any]) -> Accelerator:
    """An accelerator logging to ``run_args.report_to`` under ``output_dir`` (wandb offline by default)."""
    accelerator = new_accelerator(run_args)
    start_trackers(accelerator, run_args, project=project, record=resolved_config(config))
    return accelerator


def close_run(accelerator: Accelerator) -> None:
    """Finish the trackers and reset wandb's process-wide settings, so a later run in the same process (the
    demo, a notebook, a test session) logs to its own directory instead of this one's."""
    accelerator.end_training()
    if any(tracker.name == "wandb" for tracker in accelerator.trackers):
        import wandb

        wandb.teardown()


def _scalar(value: Any) -> Any:
    """Tracker configs take scalars (TensorBoard's hparams refuse lists): anything else as JSON text."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return json.dumps(value, sort_keys=True)


def logs_media(accelerator: Accelerator) -> bool:
    """Whether videos and tables go to a tracker: only wandb takes them (and not when wandb is disabled)."""
    return any(tracker.name == "wandb" for tracker in accelerator.trackers) and os.environ.get("WANDB_MODE") != "disabled"


def write_mp4(path: Path, video: torch.Tensor) -> Path:
    """Write one video's (T, 3, H, W) frames in [0, 1] as a 16 fps mp4 (an odd side loses its last row/column:
    yuv420p needs even sizes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    array = (video.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    height, width = array.shape[1:3]
    return write_video(path, array[:, : height - height % 2, : width - width % 2], WAN_FPS)


def write_samples(accelerator: Accelerator, folder: Path, step: int, frames: torch.Tensor, prompts: list[str]) -> list[Path]:
    """Write (N, T, 3, H, W) frames in [0, 1] as 16 fps mp4s and log them to wandb when it is the tracker."""
    paths = [write_mp4(folder / f"step_{step:06d}_{index}.mp4", video) for index, video in enumerate(frames)]
    if logs_media(accelerator):
        import wandb

        accelerator.get_tracker("wandb").log(
            {"samples": [wandb.Video(str(path), caption=prompts[i]) for i, path in enumerate(paths)]}, step=step
        )
    return paths
