"""Argument builders for the generator tests: the shipped tiny recipes pointed at test fixtures."""

from __future__ import annotations

from pathlib import Path

from trl import TrlParser

from generator_rl.config import PolicyConfig, RunConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
RECIPES = REPO_ROOT / "configs" / "generator"


def tiny_arguments(recipe: str, algorithm: type, model: Path, prompts: Path, output_dir: Path, **overrides) -> tuple:
    """(PolicyConfig, RunConfig, <algorithm>) from ``configs/generator/<recipe>.yaml`` plus overrides."""
    argv = ["--config", str(RECIPES / f"{recipe}.yaml"), "--model", str(model), "--prompts", str(prompts),
            "--output_dir", str(output_dir), "--report_to", "none", "--sample_steps", "0"]
    for key, value in overrides.items():
        argv += [f"--{key}", *(value if isinstance(value, list) else [str(value)])]
    return TrlParser([PolicyConfig, RunConfig, algorithm]).parse_args_and_config(argv)


class Preempted(RuntimeError):
    """Raised by ``dies_on_call`` to simulate a job killed mid-run."""


def dies_on_call(function, call: int):
    """Wrap ``function`` so that its ``call``-th invocation raises ``Preempted`` instead of running."""
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise Preempted(f"simulated preemption at call {call}")
        return function(*args, **kwargs)

    return wrapper


def same_lora(first, second) -> bool:
    """Bit-identical ``final/pytorch_lora_weights.safetensors`` of two run directories."""
    import torch
    from safetensors.torch import load_file

    from generator_rl.checkpoint import LORA_WEIGHTS

    a, b = load_file(first / "final" / LORA_WEIGHTS), load_file(second / "final" / LORA_WEIGHTS)
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
