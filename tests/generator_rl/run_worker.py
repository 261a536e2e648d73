"""Run by the generator tests under torchrun: the tiny GRPO recipe with ``key=value`` overrides
(argv: model, prompts, output_dir, overrides...)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from generator_rl.grpo import GrpoConfig, run_grpo  # noqa: E402
from tests.generator_rl.helpers import tiny_arguments  # noqa: E402

if __name__ == "__main__":
    model, prompts, output_dir = (Path(argument) for argument in sys.argv[1:4])
    overrides = dict(argument.split("=", 1) for argument in sys.argv[4:])
    run_grpo(*tiny_arguments("tiny_grpo", GrpoConfig, model, prompts, output_dir, **overrides))
