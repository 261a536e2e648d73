"""Run by the GRPO tests under torchrun: steps of the tiny recipe (argv: model, prompts, output_dir, then
optional ``key=value`` overrides, ``rewards=…`` repeatable; default two steps). Process 0 writes the result
to ``output_dir/result.json``; a stopped run writes its error there instead."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import tests.generator_rl.fault_rewards  # noqa: E402,F401  (registers the test reward)
from generator_rl.grpo import GrpoConfig, run_grpo  # noqa: E402
from reward.errors import NumericalFaultError  # noqa: E402
from reward.run_record import plain  # noqa: E402
from tests.generator_rl.helpers import tiny_arguments  # noqa: E402

if __name__ == "__main__":
    model, prompts, output_dir = (Path(argument) for argument in sys.argv[1:4])
    overrides = {"max_steps": 2, "save_steps": 2, "std_mode": "max_group"}
    for key, value in (argument.split("=", 1) for argument in sys.argv[4:]):
        overrides[key] = [*overrides.get(key, []), value] if key == "rewards" else value
    try:
        result = run_grpo(*tiny_arguments("tiny_grpo", GrpoConfig, model, prompts, output_dir, **overrides))
    except NumericalFaultError as error:
        result = {"error": str(error)}
    if os.environ.get("RANK", "0") == "0":
        (output_dir / "result.json").write_text(json.dumps(plain(result)))
