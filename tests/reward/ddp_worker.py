"""Run by test_distributed.py under `accelerate launch`: tiny stage 1, then each rank writes a digest of
its trainable parameters so the test can check that the ranks stayed in sync."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from reward.cold_start import run  # noqa: E402
from tests.reward.helpers import tiny_config  # noqa: E402


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
    config = tiny_config(Path(model_dir), Path(train), Path(output_dir), max_steps=3, eval_strategy="no", save_strategy="no")
    run(config, callbacks=[ParameterDigest()])
