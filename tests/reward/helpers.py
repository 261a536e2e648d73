"""Test helpers shared by the reward tests (not fixtures: plain functions)."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from transformers import TrainerCallback
from trl import TrlParser

from benchmarks.synthetic import square_clip
from reward.video import write_video
from reward.cold_start import ColdStartConfig
from reward.modeling import DeScoreModel, LoraSettings

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


def gradient_clip(frames: int, height: int, width: int) -> np.ndarray:
    """uint8 (T, H, W, 3) frames whose content moves every frame, so a wrong frame index changes pixels."""
    t = np.arange(frames)[:, None, None]
    y = np.arange(height)[None, :, None]
    x = np.arange(width)[None, None, :]
    channels = np.broadcast_arrays((3 * x + 5 * t) % 256, (2 * y + 3 * t) % 256, (x + y + 9 * t) % 256)
    return np.stack(channels, axis=-1).astype(np.uint8)


class CountingContainer:
    """A real PyAV container that counts the packets it demuxes, the frames it decodes and its seeks."""

    def __init__(self, container, counts: dict[str, int]) -> None:
        self._container, self._counts = container, counts

    def __getattr__(self, name: str):
        return getattr(self._container, name)

    def __enter__(self) -> CountingContainer:
        self._container.__enter__()
        return self

    def __exit__(self, *exc_info):
        return self._container.__exit__(*exc_info)

    def demux(self, *args, **kwargs):
        for packet in self._container.demux(*args, **kwargs):
            self._counts["packets"] += 1
            yield packet

    def decode(self, *args, **kwargs):
        for frame in self._container.decode(*args, **kwargs):
            self._counts["frames"] += 1
            yield frame

    def seek(self, *args, **kwargs):
        self._counts["seeks"] += 1
        return self._container.seek(*args, **kwargs)


def count_decoding(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """From now until the test ends, count what every ``av.open`` container reads and each decord open."""
    import decord

    counts = {"packets": 0, "frames": 0, "seeks": 0, "decord_opens": 0}
    real_open, real_reader = av.open, decord.VideoReader

    def counting_reader(*args, **kwargs):
        counts["decord_opens"] += 1
        return real_reader(*args, **kwargs)

    monkeypatch.setattr(av, "open", lambda *args, **kwargs: CountingContainer(real_open(*args, **kwargs), counts))
    monkeypatch.setattr(decord, "VideoReader", counting_reader)
    return counts
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


def trained_like(base_dir: Path, spec) -> DeScoreModel:
    """A stage-1 model (seeded) whose LoRA, vision copy, <Reward> row and head all moved from their initial
    values, so that saving, loading and merging have something to carry."""
    torch.manual_seed(0)
    model = DeScoreModel.from_base(str(base_dir), video_spec=spec, lora=LoraSettings(r=4, alpha=8))
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.05 * torch.randn_like(parameter))
    return model
