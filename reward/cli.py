"""The ``descore reward …`` commands: one table of (config dataclasses, run function)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .score_report import format_score_report


@dataclass(frozen=True)
class Command:
    """A CLI job: its help line, the dataclasses its flags fill, and the function that runs it."""

    help: str
    configs: tuple[type, ...]
    run: Callable[..., Any]
    report: Callable[[Any], str] | None = None
    # Dataclasses whose keys a --config YAML may also hold and this command ignores (e.g. `tune sample`
    # reading a training recipe for its model and sampling settings).
    ignores: tuple[type, ...] = ()


def _report_train(metrics: dict[str, float]) -> str:
    return "\n".join(f"{key}: {value:.4f}" for key, value in sorted(metrics.items()) if key.endswith("accuracy"))


def commands() -> dict[str, Command]:
    # Imported here so that `descore --help` does not pay for torch/transformers start-up.
    from .cold_start import ColdStartConfig, run
    from .jobs import ExportConfig, ScoreConfig, run_export, run_score

    return {
        "train": Command("DeScore stage 1 (cold start): BT training of the <Reward> head", (ColdStartConfig,), run, _report_train),
        "score": Command("Score videos with a DeScore checkpoint (CoT or --no-cot) or any registry reward (--reward)", (ScoreConfig,), run_score, format_score_report),
        "export": Command("Export a merged checkpoint: HF/vLLM backbone + DeScore head and manifest", (ExportConfig,), run_export, lambda path: f"wrote {path}"),
    }
