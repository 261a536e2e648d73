"""Small extractors whose outputs the tests know by hand, and real encoded clips to run them on.

A real tiny ViT (timm) and linear towers stand in for the backbones where only "identical frames give
identical features" matters; elsewhere each stub's answer is fixed in advance (a feature vector per colour, a
flow of known magnitude, a MOS per call), so the expected VBench numbers are worked out in the tests
from those answers alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from reward.video import write_video

RED, BLUE = (220, 60, 40), (40, 60, 220)


def solid_clip(colours: list[tuple[int, int, int]], *, height: int = 48, width: int = 64) -> np.ndarray:
    """uint8 (T, H, W, 3): frame t filled with ``colours[t]``."""
    return np.stack([np.full((height, width, 3), colour, dtype=np.uint8) for colour in colours])


def texture(height: int, width: int, *, seed: int = 0) -> np.ndarray:
    """A smooth random texture (blocks of 4 px) that x264 keeps and a shift search can lock on to."""
    blocks = np.random.default_rng(seed).integers(0, 256, (height // 4, width // 4, 3), dtype=np.uint8)
    return blocks.repeat(4, axis=0).repeat(4, axis=1)


def static_clip(frames: int, *, height: int = 48, width: int = 64) -> np.ndarray:
    return np.repeat(texture(height, width)[None], frames, axis=0)


def sliding_clip(frames: int, *, step: int, height: int = 64, width: int = 64) -> np.ndarray:
    """The texture moving right by ``step`` px per frame (wrapping round)."""
    image = texture(height, width)
    return np.stack([np.roll(image, step * index, axis=1) for index in range(frames)])


def write_clip(path: Path, frames: np.ndarray, fps: float) -> Path:
    """Lossless h264, so identical input frames decode to identical frames."""
    return write_video(path, frames, fps, lossless=True)


class ColourKeyedEncoder:
    """A FrameEncoder answering ``red`` for a reddish image (mean red channel above mean blue, under any
    normalisation used here) and ``blue`` otherwise; counts its calls and images."""

    def __init__(self, red: Tensor, blue: Tensor) -> None:
        self.red, self.blue = red.float(), blue.float()
        self.calls = self.images = 0
        self.shapes: list[tuple[int, ...]] = []

    def __call__(self, images: Tensor) -> Tensor:
        self.calls += 1
        self.images += len(images)
        self.shapes.append(tuple(images.shape))
        reddish = images[:, 0].mean(dim=(1, 2)) > images[:, 2].mean(dim=(1, 2))
        return torch.where(reddish[:, None], self.red, self.blue)


class TimmDino:
    """timm's ViT-Tiny/16 with random weights as the DINO stand-in: CLS features after the final norm; the
    frame is cut to whole patches first, as DINO's stride-16 patch convolution does (224×388 → 224×384)."""

    def __init__(self, seed: int = 0) -> None:
        import timm

        torch.manual_seed(seed)
        self.model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0,
                                       dynamic_img_size=True).eval()
        self.patch = self.model.patch_embed.patch_size[0]

    def __call__(self, images: Tensor) -> Tensor:
        height, width = images.shape[-2:]
        return self.model(images[..., : height - height % self.patch, : width - width % self.patch])


class LinearTower(nn.Module):
    """A "CLIP image tower": channel means of the normalised image through a random linear map to ``dim``."""

    def __init__(self, dim: int, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.projection = nn.Linear(3, dim)

    def forward(self, images: Tensor) -> Tensor:
        return self.projection(images.mean(dim=(2, 3)))


class ConstantFlow:
    """A FlowEstimator whose k-th call returns a flow of magnitude ``magnitudes[k]`` everywhere (the last one
    repeats); records the frames' shapes."""

    def __init__(self, *magnitudes: float) -> None:
        self.magnitudes = magnitudes
        self.shapes: list[tuple[int, ...]] = []

    def __call__(self, frame1: Tensor, frame2: Tensor) -> Tensor:
        magnitude = self.magnitudes[min(len(self.shapes), len(self.magnitudes) - 1)]
        self.shapes.append(tuple(frame1.shape))
        flow = torch.zeros(1, 2, *frame1.shape[-2:])
        flow[:, 0] = magnitude
        return flow


class ShiftFlow:
    """A FlowEstimator exact for a whole frame sliding sideways: the integer shift in [−radius, radius] that
    best maps frame 1 onto frame 2 (mean absolute difference over the overlap), as a uniform flow; on a tie
    (flat frames) the smallest shift. Counts its calls."""

    def __init__(self, radius: int = 6) -> None:
        self.radius = radius
        self.calls = 0

    def __call__(self, frame1: Tensor, frame2: Tensor) -> Tensor:
        self.calls += 1
        width, r = frame1.shape[-1], self.radius
        errors = {shift: (frame1[..., r - shift : width - r - shift] - frame2[..., r : width - r]).abs().mean()
                  for shift in sorted(range(-r, r + 1), key=abs)}
        flow = torch.zeros(1, 2, *frame1.shape[-2:])
        flow[:, 0] = float(min(errors, key=errors.get))
        return flow


class ScriptedQuality:
    """A QualityAssessor answering ``scores[k]`` on its k-th call (cycling); records the image shapes and range."""

    def __init__(self, *scores: float) -> None:
        self.scores = scores
        self.shapes: list[tuple[int, ...]] = []
        self.maximum = 0.0

    def __call__(self, image: Tensor) -> Tensor:
        score = self.scores[len(self.shapes) % len(self.scores)]
        self.shapes.append(tuple(image.shape))
        self.maximum = max(self.maximum, float(image.max()))
        return torch.tensor([score])
