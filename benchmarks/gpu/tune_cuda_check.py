"""GPU check of the generator side on the tiny Wan: ``descore tune doctor`` in bf16 on CUDA.

Not a speed benchmark (``wan_rl_steps.py`` is): it shows that the bf16/autocast GPU path keeps sampling-time
and training-time log-probs consistent (the tolerance is looser than fp32's 1e-4), that the first PPO ratio is
1, and whether the tiny recipe's reward rises in bf16.

    python -m benchmarks.gpu.tune_cuda_check
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import yaml

from generator_rl.config import PolicyConfig, RunConfig
from generator_rl.doctor import DoctorConfig, DoctorError, run_doctor
from generator_rl.grpo import GrpoConfig
from generator_rl.tiny_wan import save_tiny_wan

RECIPE = Path(__file__).resolve().parents[2] / "configs" / "generator" / "tiny_grpo.yaml"


def main() -> int:
    root = Path(tempfile.mkdtemp(prefix="tune-cuda-"))
    model = save_tiny_wan(root / "tiny-wan")
    prompts = root / "prompts.txt"
    prompts.write_text("a red square moving left\na blue ball bouncing\na dog on the beach\nbright sunny day\n")
    values = yaml.safe_load(RECIPE.read_text()) | {
        "model": str(model), "prompts": str(prompts), "output_dir": str(root / "run"), "transformer_dtype": "bfloat16",
        "text_encoder_dtype": "bfloat16", "mixed_precision": "bf16", "report_to": "none", "sample_steps": 0,
    }
    # Built from the YAML without trl's parser: the lent GPU machine has no `datasets`, which trl imports.
    arguments = [kind(**{k: v for k, v in values.items() if k in kind.__dataclass_fields__})
                 for kind in (PolicyConfig, RunConfig, GrpoConfig)]
    try:
        print(run_doctor(*arguments, DoctorConfig(tolerance=1e-2)))
    except DoctorError as failure:
        print(failure)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
