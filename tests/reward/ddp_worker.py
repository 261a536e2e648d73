"""Run by test_distributed.py under torchrun: tiny stage 1, then each rank writes a digest of its trainable
parameters (so the test can check that the ranks stayed in sync) and its changed-entry counts.

Usage: ddp_worker.py MODEL_DIR TRAIN_CSV OUTPUT_DIR [JSON overrides of the tiny recipe]
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from reward.cold_start import run  # noqa: E402
from tests.reward.helpers import ChangedEntries, tiny_config  # noqa: E402


class ParameterDigest(TrainerCallback):
    def on_train_end(self, args, state, control, model=None, **kwargs):
        digest = hashlib.sha256()
        for name, parameter in sorted(model.named_parameters()):
            if parameter.requires_grad:
                digest.update(name.encode())
                digest.update(parameter.detach().float().cpu().numpy().tobytes())
        record = {
            "digest": digest.hexdigest(),
            "world_size": args.world_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "global_step": state.global_step,
        }
        Path(args.output_dir, f"rank{args.process_index}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    model_dir, train, output_dir = sys.argv[1:4]
    overrides = {"max_steps": 3, "eval_strategy": "no", "save_strategy": "no"}
    overrides.update(json.loads(sys.argv[4]) if len(sys.argv) > 4 else {})
    config = tiny_config(Path(model_dir), Path(train), Path(output_dir), **overrides)
    run(config, callbacks=[ParameterDigest(), ChangedEntries()])
