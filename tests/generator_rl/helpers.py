"""Argument builders for the generator tests: the shipped tiny recipes pointed at test fixtures."""

from __future__ import annotations

from pathlib import Path

from trl import TrlParser

from generator_rl.config import PolicyArguments, RunArguments

REPO_ROOT = Path(__file__).resolve().parents[2]
RECIPES = REPO_ROOT / "configs" / "generator"


def tiny_arguments(recipe: str, algorithm: type, model: Path, prompts: Path, output_dir: Path, **overrides) -> tuple:
    """(PolicyArguments, RunArguments, <algorithm>) from ``configs/generator/<recipe>.yaml`` plus overrides."""
    argv = ["--config", str(RECIPES / f"{recipe}.yaml"), "--model", str(model), "--prompts", str(prompts),
            "--output_dir", str(output_dir), "--report_to", "none", "--sample_every", "0"]
    for key, value in overrides.items():
        argv += [f"--{key}", *(value if isinstance(value, list) else [str(value)])]
    return TrlParser([PolicyArguments, RunArguments, algorithm]).parse_args_and_config(argv)
