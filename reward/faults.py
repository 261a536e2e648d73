"""Numerical faults of an RL run (generator GRPO / Flow-DPO, DeScore stage 2): steps that cannot train are skipped,
counted and, when they keep coming, stop the run.

A step is skipped when every reward of a process is invalid (NaN: the reward model failed on each item) or
when the loss or the clipped gradient norm is not finite. A skipped step leaves the weights, the optimizer
state and the EMA as they were, but it still advances ``RunState.step``: the prompt order and the seeds are
functions of the step, so the run moves on to new data and a resumed run stays identical to a straight one.

Every process must reach the same decision, or one would wait forever in a collective (DDP's gradient
all-reduce, a gather) that the others skipped. The decisions here are therefore taken from gathered values
only, and the functions that gather are entered by every process.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from enum import Enum

import torch
from accelerate import Accelerator

from .errors import ConfigError, NumericalFaultError


class SkipReason(Enum):
    INVALID_REWARDS = "invalid_reward_steps"
    NONFINITE = "nonfinite_grad"


@dataclass
class FaultCounters:
    """Skipped steps of a run so far; kept in the run state, so the counts survive a resume."""

    skipped_steps: int = 0
    invalid_reward_steps: int = 0
    nonfinite_grad: int = 0
    consecutive_skipped: int = 0

    def record(self, reason: SkipReason | None) -> None:
        """Count the outcome of one step (None: it trained)."""
        if reason is None:
            self.consecutive_skipped = 0
            return
        self.skipped_steps += 1
        self.consecutive_skipped += 1
        setattr(self, reason.value, getattr(self, reason.value) + 1)

    def metrics(self) -> dict[str, float]:
        return {f"faults/{name}": float(value) for name, value in asdict(self).items()}

    def stop_if_stuck(self, limit: int, *, step: int, reason: SkipReason | None) -> None:
        """Raise once ``limit`` steps in a row were skipped: the run is not training any more."""
        if self.consecutive_skipped < limit:
            return
        first = step - self.consecutive_skipped + 1
        cause = {
            SkipReason.INVALID_REWARDS: "every reward of a process was invalid (NaN); check the reward model's errors "
            "in rollouts.jsonl and its logs",
            SkipReason.NONFINITE: "the loss or the gradient norm was not finite; lower the learning rate or check the "
            "reward scale",
        }[reason]
        raise NumericalFaultError(
            f"stopping: {self.consecutive_skipped} consecutive steps were skipped (steps {first}-{step}, "
            f"max_consecutive_skipped_steps={limit}); the last one because {cause}. "
            f"Skipped so far: {self.skipped_steps} ({self.invalid_reward_steps} invalid-reward, "
            f"{self.nonfinite_grad} non-finite). Resume from the last checkpoint after fixing the cause."
        )

    def state_dict(self) -> dict[str, int]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, int]) -> None:
        for name in asdict(self):
            setattr(self, name, int(state[name]))


def any_process(accelerator: Accelerator, flag: bool) -> bool:
    """True when ``flag`` is set on any process. A collective: every process must call it."""
    flags = accelerator.gather(torch.tensor([float(flag)], device=accelerator.device))
    return bool(flags.max() > 0)


def guarded_optimizer_step(
    accelerator: Accelerator,
    optimizer: torch.optim.Optimizer,
    parameters: list[torch.nn.Parameter],
    *,
    max_grad_norm: float,
    losses: list[float],
) -> tuple[float, bool]:
    """Clip the gradients and step, unless a loss of any process or the gradient norm is not finite: then
    the gradients are dropped and nothing is updated. Returns (gradient norm, whether the step was taken).

    Under fp16 mixed precision the optimizer is still called with the gradients dropped, so accelerate's
    GradScaler records the overflow and lowers its scale; without gradients AdamW leaves every weight and
    its moments as they were.
    """
    grad_norm = float(accelerator.clip_grad_norm_(parameters, max_grad_norm))
    local_fault = not (math.isfinite(grad_norm) and all(math.isfinite(loss) for loss in losses))
    finite = not any_process(accelerator, local_fault)
    if not finite:
        optimizer.zero_grad(set_to_none=True)
    if finite or accelerator.scaler is not None:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm, finite


def check_skip_limit(limit: int) -> None:
    """``max_consecutive_skipped_steps`` of a job's arguments."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ConfigError(f"max_consecutive_skipped_steps must be an integer >= 1, got {limit!r}")
