"""The ``descore tune …`` commands: one table of (config dataclasses, run function)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from reward.cli import Command

if TYPE_CHECKING:
    from .flow_dpo import FlowDpoResult
    from .grpo import GrpoResult


def _report_run(result: GrpoResult | FlowDpoResult) -> str:
    lines = [f"resumed from step {result.resumed_from_step}"] if result.resumed_from_step else []
    history = getattr(result, "reward_history", None)
    if history:
        lines.append(f"mean reward: first step {history[0]:.5f}, last step {history[-1]:.5f}")
    faults = result.faults
    if faults.skipped_steps:
        lines.append(f"skipped steps: {faults.skipped_steps} ({faults.invalid_reward_steps} with no valid reward, "
                     f"{faults.nonfinite_grad} with a non-finite loss or gradient)")
    return "\n".join([*lines, f"LoRA: {result.final}"])


def commands() -> dict[str, Command]:
    from .config import PolicyConfig, RunConfig
    from .doctor import DoctorConfig, run_doctor
    from .flow_dpo import FlowDpoConfig, run_flow_dpo
    from .grpo import GrpoConfig, run_grpo
    from .sample import SampleConfig, run_sample

    return {
        "grpo": Command("GRPO on flow matching (Flow-GRPO / DanceGRPO / LongCat variants) with any reward model",
                        (PolicyConfig, RunConfig, GrpoConfig), run_grpo, _report_run),
        "flow-dpo": Command("Flow-DPO on reward-ranked pairs (offline or online)",
                            (PolicyConfig, RunConfig, FlowDpoConfig), run_flow_dpo, _report_run),
        "sample": Command("Sample videos from the base model or a LoRA with fixed per-prompt seeds",
                          (PolicyConfig, SampleConfig), run_sample, lambda paths: f"wrote {len(paths)} video(s)",
                          ignores=(RunConfig, GrpoConfig, FlowDpoConfig)),
        "doctor": Command("A few tiny GRPO steps: log-prob parity, ratio == 1, reward rises",
                          (PolicyConfig, RunConfig, GrpoConfig, DoctorConfig), run_doctor, str),
    }
