"""``DeScoreTrainer``: transformers ``Trainer`` with a pairwise loss and DeScore checkpoints.

The Trainer supplies everything else — accelerate (DDP / FSDP / DeepSpeed), mixed precision, activation
checkpointing, schedules, trackers, evaluation loops, resumable ``checkpoint-*`` folders. This subclass
only says how a batch of pairs becomes a loss and how the model is written and read back: every checkpoint
folder is a loadable DeScore checkpoint (adapter format), so any of them can be scored directly.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import EvalPrediction, Trainer, TrainerCallback

from .losses import pairwise_accuracy

PairLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class DeScoreTrainer(Trainer):
    """Trains a :class:`DeScoreModel` on batches from :class:`reward.pairs.PairCollator`.

    ``pair_loss(margin, label)`` returns one loss per pair; the batch loss is their mean and the Trainer
    divides it by the accumulation steps.
    """

    loss_is_scaled_for_ga = False

    def __init__(self, *args: Any, pair_loss: PairLoss, training_info: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pair_loss = pair_loss
        self.training_info = training_info
        self.model_accepts_loss_kwargs = False
        self.add_callback(_EpochToDataset(self.train_dataset))

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        rewards = model(**inputs)
        pair_rewards = rewards.view(2, -1).T  # (pairs, 2): columns r_A, r_B
        loss = self.pair_loss(pair_rewards[:, 0] - pair_rewards[:, 1], labels).mean()
        return (loss, pair_rewards) if return_outputs else loss

    def prediction_step(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        inputs = self._prepare_inputs(inputs)
        labels = inputs["labels"]
        with torch.no_grad(), self.compute_loss_context_manager():
            loss, pair_rewards = self.compute_loss(model, inputs, return_outputs=True)
        if prediction_loss_only:
            return loss.detach(), None, None
        return loss.detach(), pair_rewards.detach(), labels

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if not self.args.should_save:
            return
        model = self.accelerator.unwrap_model(self.model)
        training = {**self.training_info, "global_step": self.state.global_step}
        model.save_pretrained(output_dir or self.args.output_dir, state_dict=state_dict, training=training)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: torch.nn.Module | None = None) -> None:
        (model or self.model).load_trained_weights(Path(resume_from_checkpoint))

    def _load_best_model(self) -> None:
        self.accelerator.unwrap_model(self.model).load_trained_weights(Path(self.state.best_model_checkpoint))


class _EpochToDataset(TrainerCallback):
    """Tells the training dataset which epoch starts, before the epoch's workers copy it.

    (accelerate forwards ``set_epoch`` to the sampler *or* the dataset, not both, so we do it here.)
    """

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        if hasattr(self.dataset, "set_epoch"):
            # state.epoch is fractional when resuming mid-epoch; its integer part is the epoch index
            self.dataset.set_epoch(math.floor(state.epoch + 1e-9))
        return control


def pairwise_metrics(prediction: EvalPrediction) -> dict[str, float]:
    """Held-out accuracy over decided pairs from the (pairs, 2) rewards gathered by the evaluation loop."""
    rewards = torch.as_tensor(prediction.predictions, dtype=torch.float64)
    labels = torch.as_tensor(prediction.label_ids)
    accuracy, decided = pairwise_accuracy(rewards[:, 0] - rewards[:, 1], labels)
    return {"accuracy": accuracy, "decided_pairs": float(decided)}


@contextmanager
def closed_trackers(report_to: str | list[str] | None) -> Iterator[None]:
    """Finish the wandb run a job opens, when it returns or fails.

    The Trainer's wandb callback starts a run and leaves it open (so a later ``evaluate`` can log to it). In one
    process running several jobs (the demo, a notebook) the next job would then log into this run and lose
    every step below its last one. A run that was already open before the job (the caller's) is left open.
    After finishing its own run, the job also resets wandb's process-wide settings (``wandb.teardown``): wandb
    reads ``WANDB_DIR`` once per process, and the next job writes its run next to its own outputs.
    """
    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    if not {"all", "wandb"} & set(names) or importlib.util.find_spec("wandb") is None:
        yield
        return
    import wandb

    before = wandb.run
    failed = True
    try:
        yield
        failed = False
    finally:
        if wandb.run is not None and wandb.run is not before:
            wandb.finish(exit_code=1 if failed else 0)
            wandb.teardown()
