"""DeScore stage 2 — dual-objective RL (arXiv 2605.05922, Fig. 2(c); docs/descore_stage2.md).

Starting from a stage-1 DeScore checkpoint (which is also the frozen reference), each step:

1. **Pairs.** ``pairs_per_step`` preference pairs in a seeded order that is a pure function of the step
   (:func:`reward.seeds.permuted_slice`); each process takes an equal share of every update's pairs, both
   videos of a pair on the same process.
2. **Rollouts.** ``num_generations`` CoTs per video from the *current* policy (temperature 1, top-p 1), each
   video's sampling seeded by (seed, step, video), so rollouts depend neither on batching nor on the number
   of processes. The generation backend is ``reward.generation`` (HF generate on the live model, or vLLM).
3. **Rollout rewards** (:mod:`reward.rollout_rewards`): 0.7·quality + 0.1·format + 0.2·length of the decoded
   text against the video's ground-truth sub-scores.
4. **Advantages** per video group, A = (R − mean) / (std + 1e-6) with the unbiased std, over rewards
   gathered from every process (:func:`reward.dual_rl_losses.video_group_advantages`).
5. **Old and reference log-probs** of every response token (no grad), in the same micro-batches the update
   uses, so the ratio of the first update is exactly 1.
6. **Updates.** The step's pairs in mini-batches of ``pairs_per_update`` (one AdamW step each, ``ppo_epochs``
   passes): loss = token-mean PPO-clip (1 − 0.2, 1 + 0.3, dual-clip 3) + kl_coef · token-mean k3 KL, plus
   bt_weight · BT over index-aligned rollouts (rollout i of A vs rollout i of B, ties skipped) on the head
   rewards of the ``<Reward>`` sequences. GRPO + KL reach the LLM only, BT reaches the head and the LLM.
   Gradients are summed over processes (every term is already divided by its global count), clipped to
   ``max_grad_norm``; a non-finite loss or norm skips the update and is counted (:mod:`reward.faults`).

Built from trl's pieces where they fit (``selective_log_softmax`` for token log-probabilities; ``TrlParser``
for the CLI). trl's ``GRPOTrainer`` itself is not used: it has no video inputs, no second head forward and
no paired BT term.

Resumable: ``output_dir/checkpoints/step_N`` every ``save_steps`` (:mod:`reward.dual_rl_state`); the same
command resumes from the newest, a changed configuration is refused (``run_config.json``). The result is a
merged DeScore checkpoint in ``output_dir/final`` (training info stage ``dual_rl``), loadable by
:meth:`DeScoreModel.from_pretrained` and ``descore reward score``.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from .checkpoint import atomic_directory
from .data import PreferenceData, PreferencePair, read_preferences
from .dual_rl_config import DualRlConfig
from .dual_rl_policy import Policy, load_policy, new_optimizer, pad_token_id, response_end_ids, suppressed_token_ids
from .dual_rl_rollout import PromptInputs, VideoRollouts, head_rewards, reward_response, sequence_batch
from .dual_rl_state import CHECKPOINTS, RunState, checkpoint_dir, latest_checkpoint, load_state, rng_state, save_state
from .dual_rl_update import fill_old_and_reference, gathered_advantages, micro_batches, train_update
from .errors import ConfigError
from .faults import FaultCounters, SkipReason
from .generation import build_backend
from .inputs import encode, scoring_text
from .losses import pairwise_accuracy
from .modeling import REWARD_TOKEN
from .prompts import judge_text
from .rollout_rewards import rollout_reward
from .run_record import RUN_CONFIG, check_model_source, check_same_run, file_sha256, resolved_config, write_run_config
from .seeds import permuted_slice, seeded_generator
from .video import load_video

logger = logging.getLogger(__name__)

JOB = "reward-train-dual-rl"
PROJECT = "descore-dual-rl"
# What a resumed run may change: how long it trains and how it logs, evaluates and saves.
RESUME_ALLOWED = ("output_dir", "max_steps", "save_steps", "eval_steps", "logging_steps", "report_to",
                  "overwrite_output_dir")
WRITTEN = (CHECKPOINTS, "final", RUN_CONFIG, "wandb", "logs")


@dataclass(frozen=True)
class DualRlResult:
    """What one ``run`` call did (a resumed call reports the steps it trained itself)."""

    final: Path
    reward_history: list[float]  # mean rollout reward of each step this call ran
    first_ratio: float | None  # mean PPO ratio of this call's first update (1: old log-probs == new)
    eval_metrics: dict[str, float]  # the last held-out evaluation (empty without eval_data)
    faults: FaultCounters
    resumed_from_step: int | None


# ----- setup ---------------------------------------------------------------------------------------------


def run_record(config: DualRlConfig) -> dict[str, dict[str, Any]]:
    """Every field (local paths absolute) plus the digest of each data file: the same paths with other
    content are another run."""
    values = {name: getattr(config, name) for name in config.__dataclass_fields__}
    for key in ("train_data", "eval_data", "model_name_or_path"):
        if values[key] is not None and Path(values[key]).expanduser().exists():
            values[key] = str(Path(values[key]).expanduser().resolve())
    data = {key: file_sha256(getattr(config, key)) if getattr(config, key) else None for key in ("train_data", "eval_data")}
    return resolved_config({"config": values, "data_sha256": data})


def claim_output_dir(config: DualRlConfig, record: dict[str, dict[str, Any]], accelerator: Accelerator) -> None:
    """Refuse a recorded run with other settings (or unrecorded checkpoints); with ``overwrite_output_dir``
    remove what a stage-2 run writes first; then write the record."""
    output_dir = Path(config.output_dir)
    if config.overwrite_output_dir and accelerator.is_main_process:
        for name in WRITTEN:
            path = output_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    accelerator.wait_for_everyone()
    if not check_same_run(output_dir, JOB, record, allowed=RESUME_ALLOWED) and latest_checkpoint(output_dir):
        raise ConfigError(f"{output_dir} holds checkpoints but no {RUN_CONFIG}, so it cannot be told whether they belong "
                          "to this run; use another output_dir, or pass --overwrite_output_dir true to restart it")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_run_config(output_dir, JOB, record)
    accelerator.wait_for_everyone()


def load_pairs(path: str, config: DualRlConfig, *, need_truth: bool) -> PreferenceData:
    """The preference pairs of ``path``; training pairs must carry each video's ground-truth sub-scores."""
    data = read_preferences(path, skip_invalid=config.skip_invalid, reserved_tokens=(REWARD_TOKEN,),
                            probe_videos=config.probe_videos, limits=config.decode_limits())
    if need_truth:
        missing = [pair.line for pair in data.pairs if pair.scores_a is None or pair.scores_b is None]
        if missing:
            raise ConfigError(f"{path}: lines {missing[:10]} have no ground-truth sub-scores (scores_a / scores_b); "
                              "stage 2's quality reward needs them for every pair")
    if not data.pairs:
        raise ConfigError(f"{path}: no usable pairs")
    return data


def new_accelerator(config: DualRlConfig) -> Accelerator:
    """bf16 autocast when asked; on a CPU-only machine ``cpu=True`` lets accelerate join a torchrun (gloo) group."""
    return Accelerator(mixed_precision="bf16" if config.bf16 else "no",
                       log_with=None if config.report_to == "none" else config.report_to,
                       project_dir=config.output_dir, cpu=not torch.cuda.is_available())


def start_trackers(accelerator: Accelerator, config: DualRlConfig, record: dict[str, dict[str, Any]]) -> None:
    if config.report_to == "none":
        return
    flat = {f"{group}.{key}": value if isinstance(value, (str, int, float, bool)) or value is None else str(value)
            for group, values in record.items() for key, value in values.items()}
    init = {"wandb": {"dir": str(config.output_dir)}} if config.report_to == "wandb" else {}
    accelerator.init_trackers(PROJECT, config=flat, init_kwargs=init)


# ----- one step -----------------------------------------------------------------------------------------


def step_pairs(config: DualRlConfig, pairs: list[PreferencePair], *, step: int, rank: int, processes: int
               ) -> list[tuple[int, PreferencePair]]:
    """(position in the step, pair) of this process: its equal share of each update's pairs."""
    order = permuted_slice(len(pairs), step, config.pairs_per_step, config.seed)
    share = config.pairs_per_update // processes
    mine = []
    for start in range(0, config.pairs_per_step, config.pairs_per_update):
        first = start + rank * share
        mine += [(position, pairs[order[position]]) for position in range(first, first + share)]
    return mine


def collect_rollouts(
    config: DualRlConfig, policy: Policy, backend: Any, pairs: list[tuple[int, PreferencePair]], *, step: int,
) -> list[VideoRollouts]:
    """G rollouts per video of this process's pairs (A then B of each pair), with their rollout rewards."""
    model = policy.model
    settings = config.rollout_settings()
    rewards = config.reward_settings()
    collected = []
    for position, pair in pairs:
        judge = judge_text(pair.prompt, pair.instruction, template=model.judge_template)
        for side, (path, truth) in enumerate(((pair.video_a, pair.scores_a), (pair.video_b, pair.scores_b))):
            video = load_video(path, model.video_spec, limits=config.decode_limits())
            video_id = 2 * position + side
            seed = seeded_generator(config.seed, step, "rollout", video_id).initial_seed()
            generations = backend.generate([judge], [video], settings=settings, num_generations=config.num_generations,
                                           seed=seed)[0]
            scored = [rollout_reward(g.text, num_tokens=_response_tokens(g), truth=truth, settings=rewards)
                      for g in generations]
            collected.append(VideoRollouts(video_id, PromptInputs.encode(model.processor, judge, video), generations,
                                           scored))
    return collected


def _response_tokens(generation: Any) -> int:
    """Generated tokens, the end token not counted."""
    return len(generation.token_ids) - (0 if generation.truncated else 1)


# ----- evaluation ---------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(config: DualRlConfig, policy: Policy, backend: Any, accelerator: Accelerator,
             pairs: list[PreferencePair]) -> dict[str, float]:
    """Head accuracy on held-out pairs with a greedy CoT from the current policy and without a CoT."""
    model = policy.model
    greedy = replace(config.rollout_settings(), temperature=0.0)
    end_ids = response_end_ids(model)
    results = []
    model.eval()
    for pair in pairs[accelerator.process_index::accelerator.num_processes]:
        judge = judge_text(pair.prompt, pair.instruction, template=model.judge_template)
        videos = [load_video(path, model.video_spec, limits=config.decode_limits()) for path in (pair.video_a, pair.video_b)]
        generations = [row[0] for row in backend.generate([judge, judge], videos, settings=greedy, seed=config.seed)]
        prompts = [PromptInputs.encode(model.processor, judge, video) for video in videos]
        items = [(prompt, reward_response(g.token_ids, reward_token_id=model.reward_token_id, end_token_ids=end_ids))
                 for prompt, g in zip(prompts, generations)]
        with accelerator.autocast():
            with_cot = head_rewards(model, sequence_batch(items, pad_token_id=pad_token_id(model)).to(accelerator.device))
            texts = [scoring_text(model.processor, judge, None, placement=model.cot_placement,
                                  reward_token=model.reward_token)] * 2
            without = model(**encode(model.processor, texts, videos).to(accelerator.device))
        results.append((float(with_cot[0] - with_cot[1]), float(without[0] - without[1]), pair.label))
    model.train()
    results = gather_object(results)
    labels = torch.tensor([label for *_, label in results])
    with_accuracy, _ = pairwise_accuracy(torch.tensor([r[0] for r in results]), labels)
    without_accuracy, count = pairwise_accuracy(torch.tensor([r[1] for r in results]), labels)
    return {"eval/head_accuracy_cot": with_accuracy, "eval/head_accuracy_no_cot": without_accuracy,
            "eval/decided_pairs": float(count)}


# ----- the run ------------------------------------------------------------------------------------------


def check_sizes(config: DualRlConfig, processes: int) -> None:
    if config.pairs_per_update % processes:
        raise ConfigError(f"pairs_per_update ({config.pairs_per_update}) must be divisible by the number of "
                          f"processes ({processes}): each process takes an equal share of every update's pairs")


def run(config: DualRlConfig) -> DualRlResult:
    """Train (or resume) stage 2 to ``max_steps`` and write ``output_dir/final``."""
    check_model_source(config.model_name_or_path, what="model_name_or_path", ask_hub=True)
    record = run_record(config)
    accelerator = new_accelerator(config)
    check_sizes(config, accelerator.num_processes)
    train = load_pairs(config.train_data, config, need_truth=True)
    evaluation = load_pairs(config.eval_data, config, need_truth=False) if config.eval_data else None
    claim_output_dir(config, record, accelerator)
    start_trackers(accelerator, config, record)
    try:
        return _train(config, accelerator, train, evaluation, record)
    finally:
        accelerator.end_training()
        if config.report_to == "wandb":  # a later run in this process (a notebook, a test) gets its own wandb run
            import wandb

            wandb.teardown()


def _train(config: DualRlConfig, accelerator: Accelerator, train: PreferenceData, evaluation: PreferenceData | None,
           record: dict[str, dict[str, Any]]) -> DualRlResult:
    output_dir = Path(config.output_dir)
    torch.manual_seed(config.seed)
    policy = load_policy(config, accelerator.device)
    optimizer = new_optimizer(config, policy)
    state = RunState()
    checkpoint = latest_checkpoint(output_dir)
    if checkpoint is not None:
        logger.info("resuming from %s", checkpoint)
        load_state(checkpoint, parameters=policy.parameters, optimizer=optimizer, state=state,
                   rank=accelerator.process_index)
    resumed_from = state.step or None
    model = policy.model
    backend = build_backend(config.rollout_settings(), model=model, model_path=config.model_name_or_path,
                            device=accelerator.device, suppress_token_ids=suppressed_token_ids(model),
                            seed=config.seed)
    history, first_ratio, eval_metrics = [], None, {}
    for step in range(state.step, config.max_steps):
        started = time.perf_counter()
        mine = step_pairs(config, train.pairs, step=step, rank=accelerator.process_index,
                          processes=accelerator.num_processes)
        backend.sync_weights(model)  # vLLM colocate: the engine samples from the current weights (HF: no-op)
        model.eval()
        rollouts = collect_rollouts(config, policy, backend, mine, step=step)
        model.train()
        sampled = time.perf_counter()
        advantages = gathered_advantages(accelerator, rollouts)
        updates = micro_batches(config, rollouts, advantages, [pair.label for _, pair in mine],
                                reward_token_id=model.reward_token_id, end_ids=response_end_ids(model),
                                pad_token_id=pad_token_id(model))
        fill_old_and_reference(config, policy, accelerator, updates)
        stats: dict[str, list[float]] = {}
        skipped = 0
        for _ in range(config.ppo_epochs):
            for batches in updates:
                update_stats, applied = train_update(config, policy, optimizer, accelerator, batches)
                if first_ratio is None and applied:
                    first_ratio = float(torch.tensor(update_stats["ratio"]).mean())
                skipped += not applied
                for key, values in update_stats.items():
                    stats.setdefault(key, []).extend(values)
        reason = SkipReason.NONFINITE if skipped == len(updates) * config.ppo_epochs else None
        state.faults.record(reason)
        state.step = step + 1
        metrics = step_metrics(accelerator, rollouts, stats, skipped_updates=skipped)
        metrics |= state.faults.metrics() | {"time/rollout_s": sampled - started,
                                             "time/update_s": time.perf_counter() - sampled}
        history.append(metrics["reward/total/mean"])
        if evaluation is not None and config.eval_steps and state.step % config.eval_steps == 0:
            eval_metrics = evaluate(config, policy, backend, accelerator, evaluation.pairs)
            metrics |= eval_metrics
        if accelerator.is_main_process and step % config.logging_steps == 0:
            accelerator.log(metrics, step=step)
        logger.info("step %d: reward %.4f, bt %.4f, kl %.2e", step, metrics["reward/total/mean"],
                    metrics["train/bt_loss"], metrics["train/kl"])
        state.faults.stop_if_stuck(config.max_consecutive_skipped_steps, step=step, reason=reason)
        if state.step % config.save_steps == 0 or state.step == config.max_steps:
            save_checkpoint(accelerator, output_dir, policy, optimizer, state)
    final = export_final(config, accelerator, policy, train, record)
    return DualRlResult(final, history, first_ratio, eval_metrics, replace(state.faults), resumed_from)


def step_metrics(accelerator: Accelerator, rollouts: list[VideoRollouts], stats: dict[str, list[float]], *,
                 skipped_updates: int) -> dict[str, float]:
    """The step's rollout rewards and lengths (over every process) and update statistics (this process)."""
    local = [(r.total, r.quality, r.format, r.length, float(not r.parsed), float(g.truncated), float(len(g.token_ids)))
             for video in rollouts for g, r in zip(video.generations, video.rewards)]
    everything = accelerator.gather(torch.tensor(local, dtype=torch.float64, device=accelerator.device)).cpu()
    metrics = {f"reward/{name}/mean": float(everything[:, column].mean())
               for column, name in enumerate(("total", "quality", "format", "length"))}
    metrics |= {"rollout/parse_failure_rate": float(everything[:, 4].mean()),
                "rollout/truncated_share": float(everything[:, 5].mean()),
                "rollout/response_length_mean": float(everything[:, 6].mean()),
                "rollout/response_length_max": float(everything[:, 6].max())}

    def mean(key: str) -> float:
        return float(torch.tensor(stats[key]).mean()) if stats.get(key) else math.nan

    metrics |= {"train/pg_loss": mean("pg"), "train/kl": mean("kl"), "train/clip_fraction": mean("clipped"),
                "train/ratio_mean": mean("ratio"), "train/bt_loss": mean("bt"),
                "train/head_accuracy": mean("bt_correct"), "train/skipped_updates": float(skipped_updates)}
    return metrics


def save_checkpoint(accelerator: Accelerator, output_dir: Path, policy: Policy, optimizer: torch.optim.Optimizer,
                    state: RunState) -> None:
    rng = gather_object([(accelerator.process_index, rng_state())])
    if accelerator.is_main_process:
        save_state(checkpoint_dir(output_dir, state.step), parameters=policy.parameters, optimizer=optimizer,
                   state=state, rng_states=dict(rng))
    accelerator.wait_for_everyone()


def export_final(config: DualRlConfig, accelerator: Accelerator, policy: Policy, train: PreferenceData,
                 record: dict[str, dict[str, Any]]) -> Path:
    """``output_dir/final``: the merged DeScore checkpoint, the LLM rounded once to ``torch_dtype``."""
    final = Path(config.output_dir) / "final"
    if accelerator.is_main_process:
        model = policy.model.merge_lora_()
        dtype = config.torch_dtype if config.torch_dtype != "auto" else None
        if dtype is not None:
            model.backbone.to(getattr(torch, dtype))
        training = {"stage": "dual_rl", "init": str(config.model_name_or_path), "train_data": str(config.train_data),
                    "train_pairs": len(train), "steps": config.max_steps, "adaptation": config.adaptation,
                    "bt_weight": config.bt_weight, "kl_coef": config.kl_coef}
        with atomic_directory(final) as staging:
            model.save_pretrained(staging, training=training)
            write_run_config(staging, JOB, record)
    accelerator.wait_for_everyone()
    return final

