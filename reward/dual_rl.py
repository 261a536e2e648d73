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

import copy
import logging
import math
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from .checkpoint import atomic_directory
from .data import PreferenceData, PreferencePair, read_preferences
from .dual_rl_config import DualRlConfig
from .dual_rl_losses import (
    low_var_kl, masked_token_sum, paired_bt_loss, token_ppo_clip_loss, video_group_advantages,
)
from .dual_rl_rollout import (
    PromptInputs, SequenceBatch, VideoRollouts, head_rewards, response_log_probs, reward_response, sequence_batch,
)
from .dual_rl_state import CHECKPOINTS, RunState, checkpoint_dir, latest_checkpoint, load_state, rng_state, save_state
from .errors import ConfigError
from .faults import FaultCounters, SkipReason, guarded_optimizer_step
from .generation import build_backend, end_token_ids
from .inputs import encode, scoring_text
from .losses import pairwise_accuracy
from .modeling import REWARD_TOKEN, DeScoreModel, LoraSettings, pixel_factor, upcast_trainable_
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


@dataclass
class Policy:
    """The trained DeScore model, its frozen reference and what the optimizer steps."""

    model: DeScoreModel
    reference: torch.nn.Module | None  # frozen copy of the initial backbone (full); None with LoRA (adapters off)
    parameters: dict[str, torch.nn.Parameter]  # trained tensors by name ("head.weight" included)

    @contextmanager
    def reference_mode(self) -> Iterator[torch.nn.Module]:
        """The backbone that computes reference log-probs: the frozen copy, or the policy with LoRA disabled."""
        if self.reference is not None:
            yield self.reference
        else:
            with self.model.backbone.disable_adapter():
                yield self.model.backbone


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


def load_policy(config: DualRlConfig, device: torch.device) -> Policy:
    """The stage-1 checkpoint (LoRA merged in), trained in full (the LLM, vision tower frozen) or through a
    fresh LoRA; the head always. Trained tensors are float32, the rest stays in ``torch_dtype``."""
    model = DeScoreModel.from_pretrained(config.model_name_or_path, dtype=config.torch_dtype,
                                         attn_implementation=config.attn_implementation).merge_lora_()
    if model.cot_placement != "assistant":
        logger.warning("%s scores with the CoT in the user turn; stage 2 trains the head on CoTs in the assistant "
                       "turn (as the official stage 2), so the result is saved with cot_placement 'assistant'",
                       config.model_name_or_path)
        model.cot_placement = "assistant"
    model.video_spec = config.video_spec(pixel_factor(model.processor))
    backbone = model.backbone
    backbone.requires_grad_(False)
    reference = None
    if config.adaptation == "full":
        reference = copy.deepcopy(backbone).eval()
        for name, parameter in backbone.named_parameters():
            parameter.requires_grad_(not _is_vision(name))
    else:
        from peft import get_peft_model

        lora = LoraSettings(r=config.lora_rank, alpha=config.lora_alpha, dropout=config.lora_dropout,
                            target_modules=config.lora_target_modules, full_modules=())
        model.backbone = get_peft_model(backbone, lora.peft_config(model.reward_token_id))  # LoRA + <Reward> row
    upcast_trainable_(model)
    if config.activation_checkpointing:
        model.activation_checkpointing_enable()
    model.to(device).train()
    if reference is not None:
        reference.to(device)
    parameters = {name: parameter for name, parameter in model.named_parameters() if parameter.requires_grad}
    return Policy(model, reference, parameters)


def _is_vision(name: str) -> bool:
    return ".visual." in f".{name}"


def new_optimizer(config: DualRlConfig, policy: Policy) -> torch.optim.AdamW:
    """One AdamW over the LLM (or LoRA) weights and the head, the head in its own group (own lr if set)."""
    head = [policy.parameters["head.weight"]]
    llm = [parameter for name, parameter in policy.parameters.items() if name != "head.weight"]
    head_lr = config.head_learning_rate if config.head_learning_rate is not None else config.learning_rate
    return torch.optim.AdamW([{"params": llm}, {"params": head, "lr": head_lr}], lr=config.learning_rate,
                             betas=(config.adam_beta1, config.adam_beta2), weight_decay=config.weight_decay, eps=1e-8)


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


def gathered_advantages(accelerator: Accelerator, rollouts: list[VideoRollouts]) -> torch.Tensor:
    """Advantages of this process's rollouts (rows in rollout order), normalised per video over the rewards
    of every process (a group always lives on one process, but gathering keeps that an implementation detail)."""
    local = torch.tensor([[r.total, float(video.video_id)] for video in rollouts for r in video.rewards],
                         dtype=torch.float64, device=accelerator.device)
    everything = accelerator.gather(local).cpu()
    advantages = video_group_advantages(everything[:, 0], everything[:, 1].long())
    rows = len(local)
    return advantages[accelerator.process_index * rows: (accelerator.process_index + 1) * rows]


@dataclass
class MicroBatch:
    """Index-aligned rollouts of video pairs in one forward: rows [A_i0, B_i0, A_i1, B_i1, ...]."""

    policy: SequenceBatch
    reward: SequenceBatch | None
    advantages: torch.Tensor  # (B,)
    labels: torch.Tensor  # (B/2,) pair labels, 0 for ties
    old_log_probs: torch.Tensor | None = None
    reference_log_probs: torch.Tensor | None = None


def micro_batches(config: DualRlConfig, rollouts: list[VideoRollouts], advantages: torch.Tensor,
                  labels: list[int], *, reward_token_id: int, end_ids: Sequence[int], pad_token_id: int
                  ) -> list[list[MicroBatch]]:
    """The micro-batches of each update (this process's share), in training order."""
    per_video = config.num_generations
    rows = advantages.view(len(rollouts), per_video)
    units = []  # (video A, video B, rollout index, pair index)
    for pair_index in range(len(rollouts) // 2):
        for index in range(per_video):
            units.append((2 * pair_index, 2 * pair_index + 1, index, pair_index))
    pairs_here = len(rollouts) // 2
    share = pairs_here // (config.pairs_per_step // config.pairs_per_update)
    updates = []
    for update_start in range(0, pairs_here, share):
        update_units = [u for u in units if update_start <= u[3] < update_start + share]
        batches = []
        for start in range(0, len(update_units), config.micro_batch_pairs):
            chunk = update_units[start:start + config.micro_batch_pairs]
            policy_items, reward_items, chunk_advantages = [], [], []
            for a, b, index, _ in chunk:
                for video in (a, b):
                    generation = rollouts[video].generations[index]
                    policy_items.append((rollouts[video].prompt, generation.token_ids))
                    reward_items.append((rollouts[video].prompt, reward_response(
                        generation.token_ids, reward_token_id=reward_token_id, end_token_ids=end_ids)))
                    chunk_advantages.append(rows[video, index])
            chunk_labels = torch.tensor([labels[pair] for *_, pair in chunk])
            batches.append(MicroBatch(
                sequence_batch(policy_items, pad_token_id=pad_token_id),
                sequence_batch(reward_items, pad_token_id=pad_token_id) if config.bt_weight > 0 else None,
                torch.stack(chunk_advantages), chunk_labels))
        updates.append(batches)
    return updates


@torch.no_grad()
def fill_old_and_reference(config: DualRlConfig, policy: Policy, accelerator: Accelerator,
                           updates: list[list[MicroBatch]]) -> None:
    """Old log-probs (the current policy) and, with a KL term, reference log-probs of every micro-batch."""
    device = accelerator.device
    for batch in (b for update in updates for b in update):
        inputs = batch.policy.to(device)
        with accelerator.autocast():
            batch.old_log_probs = response_log_probs(policy.model.backbone, inputs, temperature=config.temperature)
            if config.kl_coef > 0:
                with policy.reference_mode() as reference:
                    batch.reference_log_probs = response_log_probs(reference, inputs, temperature=config.temperature)


def global_sum(accelerator: Accelerator, value: float) -> float:
    return float(accelerator.reduce(torch.tensor([value], dtype=torch.float64, device=accelerator.device), "sum"))


def train_update(config: DualRlConfig, policy: Policy, optimizer: torch.optim.Optimizer, accelerator: Accelerator,
                 batches: list[MicroBatch]) -> tuple[dict[str, list[float]], bool]:
    """One optimizer step over one update's micro-batches; returns per-item stats and whether it was applied."""
    device = accelerator.device
    tokens = global_sum(accelerator, sum(float(b.policy.response_mask.sum()) for b in batches))
    decided = global_sum(accelerator, sum(float((b.labels != 0).sum()) for b in batches))
    stats: dict[str, list[float]] = {key: [] for key in ("pg", "kl", "ratio", "clipped", "bt", "bt_correct", "loss")}
    for batch in batches:
        inputs = batch.policy.to(device)
        mask = inputs.response_mask
        with accelerator.autocast():
            log_probs = response_log_probs(policy.model.backbone, inputs, temperature=config.temperature)
            clipped = token_ppo_clip_loss(log_probs, batch.old_log_probs, batch.advantages.to(device), mask,
                                          clip_low=config.clip_low, clip_high=config.clip_high,
                                          dual_clip=config.dual_clip)
            loss = masked_token_sum(clipped.loss, mask) / tokens
            kl = torch.zeros_like(log_probs)
            if config.kl_coef > 0:
                kl = low_var_kl(log_probs, batch.reference_log_probs)
                loss = loss + config.kl_coef * masked_token_sum(kl, mask) / tokens
            bt = None
            if batch.reward is not None and decided > 0:
                rewards = head_rewards(policy.model, batch.reward.to(device)).view(-1, 2)
                bt = paired_bt_loss(rewards[:, :1], rewards[:, 1:], batch.labels.to(device))
                loss = loss + config.bt_weight * bt.loss.sum() / decided
        accelerator.backward(loss)
        real = mask.bool()
        stats["loss"].append(float(loss.detach()))
        stats["pg"] += clipped.loss[real].detach().cpu().tolist()
        stats["kl"] += kl[real].detach().cpu().tolist()
        stats["ratio"] += clipped.ratio[real].cpu().tolist()
        stats["clipped"] += clipped.clipped[real].float().cpu().tolist()
        if bt is not None:
            stats["bt"] += bt.loss.detach().cpu().tolist()
            stats["bt_correct"] += (bt.labels * bt.margins > 0).float().cpu().tolist()
    parameters = list(policy.parameters.values())
    sum_gradients(accelerator, parameters)
    _, applied = guarded_optimizer_step(accelerator, optimizer, parameters, max_grad_norm=config.max_grad_norm,
                                        losses=stats["loss"])
    return stats, applied


def sum_gradients(accelerator: Accelerator, parameters: list[torch.nn.Parameter]) -> None:
    """Sum every gradient over the processes (each loss term is already divided by its global count). The
    model is not DDP-wrapped: one optimizer step takes two forwards per micro-batch (policy and head)."""
    if accelerator.num_processes == 1:
        return
    for parameter in parameters:
        if parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)
        parameter.grad = accelerator.reduce(parameter.grad, "sum")


# ----- evaluation ---------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(config: DualRlConfig, policy: Policy, backend: Any, accelerator: Accelerator,
             pairs: list[PreferencePair]) -> dict[str, float]:
    """Head accuracy on held-out pairs with a greedy CoT from the current policy and without a CoT."""
    model = policy.model
    greedy = replace(config.rollout_settings(), temperature=0.0)
    end_ids = _end_token_ids(model)
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
            with_cot = head_rewards(model, sequence_batch(items, pad_token_id=_pad_id(model)).to(accelerator.device))
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


def suppressed_token_ids(model: DeScoreModel) -> tuple[int, ...]:
    """Tokens a rollout must never sample: ``<Reward>`` (the head's query) and the image / video placeholders
    and their delimiters (a sampled ``<|video_pad|>`` would ask the training forward for a video that is not
    there)."""
    processor = model.processor
    names = [getattr(processor, name, None) for name in ("image_token", "video_token", "vision_start_token",
                                                         "vision_end_token")]
    ids = processor.tokenizer.convert_tokens_to_ids([name for name in names if name])
    return (model.reward_token_id, *(i for i in ids if i is not None and i != processor.tokenizer.unk_token_id))


def _end_token_ids(model: DeScoreModel) -> tuple[int, ...]:
    return end_token_ids(getattr(model.backbone, "generation_config", None), model.processor)


def _pad_id(model: DeScoreModel) -> int:
    return model.processor.tokenizer.pad_token_id


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
                                reward_token_id=model.reward_token_id, end_ids=_end_token_ids(model),
                                pad_token_id=_pad_id(model))
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

