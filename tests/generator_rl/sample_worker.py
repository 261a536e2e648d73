"""Run by the `tune sample` tests under torchrun: samples the tiny model (argv: model, prompts, output_dir,
then ``key=value`` SampleConfig overrides) with the policy settings of the generator tests."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from generator_rl.sample import SampleConfig, run_sample  # noqa: E402
from tests.generator_rl.test_policy import tiny_policy_arguments  # noqa: E402

if __name__ == "__main__":
    model, prompts, output_dir = sys.argv[1:4]
    overrides = dict(argument.split("=", 1) for argument in sys.argv[4:])
    typed = {key: int(value) if key in ("seed", "videos_per_prompt") else value == "true" if key == "lossless" else value
             for key, value in overrides.items()}
    run_sample(tiny_policy_arguments(model), SampleConfig(prompts=prompts, output_dir=output_dir, device="cpu", **typed))
