"""Test helpers shared by the reward tests (not fixtures: plain functions)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from transformers import TrainerCallback
from trl import TrlParser

from benchmarks.synthetic import square_clip
from reward.video import write_video
from reward.cold_start import ColdStartConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY_RECIPE = REPO_ROOT / "configs" / "reward" / "tiny_cold_start.yaml"


def tiny_config(model_dir: Path, train: Path, output_dir: Path, held_out: Path | None = None, **overrides) -> ColdStartConfig:
    """The shipped tiny recipe, pointed at test data, through the same parser as the CLI."""
    args = [
        "--config", str(TINY_RECIPE),
        "--model_name_or_path", str(model_dir),
        "--train_data", str(train),
        "--output_dir", str(output_dir),
        "--report_to", "none",
        "--disable_tqdm", "true",
    ]
    if held_out is not None:
        args += ["--eval_data", str(held_out)]
    for key, value in overrides.items():
        args += [f"--{key}", str(value)]
    (config,) = TrlParser([ColdStartConfig]).parse_args_and_config(args)
    return config


def small_clip(path: Path, *, frames: int = 8, fps: float = 4.0, seed: int = 0) -> Path:
    """A real 8-frame 64x64 h264 clip."""
    clip = square_clip(np.random.default_rng(seed), colour="red", direction="left", noise=5.0, frames=frames)
    return write_video(path, clip, fps)


def truncated_clip(path: Path) -> Path:
    """An mp4 cut to a third of its bytes: the container index ('moov atom') is gone."""
    whole = small_clip(path.with_name("whole_" + path.name)).read_bytes()
    path.write_bytes(whole[: len(whole) // 3])
    return path


class ChangedEntries(TrainerCallback):
    """Counts, per trainable tensor, the entries that received a gradient and the entries that changed over a
    run, and writes them to ``output_dir/changes-rank{N}.json`` (each process its own file)."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.before = {name: p.detach().float().cpu().clone() for name, p in model.named_parameters() if p.requires_grad}
        self.touched = {name: torch.zeros(value.shape, dtype=torch.bool) for name, value in self.before.items()}

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        for name, parameter in model.named_parameters():
            if parameter.requires_grad and parameter.grad is not None:
                self.touched[name] |= parameter.grad.detach().cpu() != 0

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.after = {name: p.detach().cpu().clone() for name, p in model.named_parameters() if p.requires_grad}
        counts = {
            name: {
                "dtype": str(value.dtype),
                "numel": value.numel(),
                "touched": int(self.touched[name].sum()),
                "changed": int((value.float() != self.before[name]).sum()),
            }
            for name, value in self.after.items()
        }
        frozen = sorted({str(p.dtype) for p in model.parameters() if not p.requires_grad and p.is_floating_point()})
        record = {"counts": counts, "frozen_dtypes": frozen, "global_step": state.global_step}
        Path(args.output_dir, f"changes-rank{args.process_index}.json").write_text(json.dumps(record))


def wandb_history(run_file: Path) -> list[dict]:
    """The rows an offline wandb run logged, read from its ``run-*.wandb`` file (a LevelDB-style log of
    protobuf records in 32 KiB blocks, after a 7-byte file header)."""
    from wandb.proto import wandb_internal_pb2

    data = run_file.read_bytes()
    block, position, pending, rows = 32768, 7, b"", []
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a record header is padding
            position += block - position % block
            continue
        length, kind = int.from_bytes(data[position + 4 : position + 6], "little"), data[position + 6]
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a whole record, or the last fragment of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item})
    return rows
