"""MUSIQ, the image-quality model behind VBench's ``imaging_quality`` (our own implementation).

Ke, Wang, Wang, Milanfar, Yang, "MUSIQ: Multi-scale Image Quality Transformer", ICCV 2021. VBench scores every
frame with the PyTorch port in pyiqa (``pyiqa/archs/musiq_arch.py`` and ``pyiqa/data/multiscale_trans_util.py``
of github.com/chaofengc/IQA-PyTorch, unchanged in numerics since 2022) loaded with the SPAQ checkpoint
``musiq_spaq_ckpt-358bb6af.pth``. pyiqa is licensed for non-commercial use only, so the kit neither imports nor
copies it: this module is written from the paper and that behaviour, with the same parameter names, so the
released file loads with no missing or unexpected key. docs/vbench/musiq_raft.md has the details.

One forward pass, for an image ``x`` in [0, 1]:

1. ``x <- (x - 0.5) * 2``.
2. Multi-scale patches (:func:`multiscale_patches`): the image resized (bicubic, aspect ratio kept) so its longer
   side is 224, then 384, then the image itself; each cut into 32x32 patches with TensorFlow "SAME" zero
   padding; every patch tagged with a hashed spatial position on a 10x10 grid and its scale index. The two
   resized scales are zero-padded to ceil(L / 32)^2 patches (49 and 144) with a mask; the native scale keeps all.
3. A ResNet stem on each patch (weight-standardised 7x7/2 conv, GroupNorm, ReLU, 3x3/2 max-pool, one bottleneck
   64 -> 256): a 256 x 8 x 8 map, flattened channel-last into one token.
4. A pre-norm transformer over [CLS, tokens] with the hashed-position and scale embeddings added; masked tokens
   get a score of -1000 before the softmax, as in pyiqa.
5. ``head`` (a linear layer) on the final CLS token: the MOS on SPAQ's 0..100 scale.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from reward.checkpoint import atomic_file
from reward.clip_encoders import load_strictly, read_state_dict
from reward.errors import CheckpointError, ConfigError

LONGER_SIDES = (224, 384)  # pyiqa's default ``longer_side_lengths``; the native resolution is the third scale
HEAD_DIM = 64  # the released checkpoints use 6 heads of 64 channels (a state dict does not record the count)
STEM_WIDTH = 64  # the ResNet stem's width; its bottleneck widens it 4x
MASKED_SCORE = -1e3  # attention score of a padded token (pyiqa's value)


@dataclass(frozen=True)
class MusiqSize:
    """The sizes that vary between MUSIQ checkpoints; everything else is fixed by the architecture."""

    hidden: int
    layers: int
    mlp: int
    patch: int = 32
    grid: int = 10  # the hash-based spatial embedding is a grid x grid table

    @property
    def heads(self) -> int:
        return self.hidden // HEAD_DIM


REAL_MUSIQ = MusiqSize(hidden=384, layers=14, mlp=1152)  # the SPAQ checkpoint: 27,125,825 parameters
TINY_MUSIQ = MusiqSize(hidden=128, layers=2, mlp=256)
MUSIQ_SIZES = {"real": REAL_MUSIQ, "tiny": TINY_MUSIQ}


class MultiScalePatches(NamedTuple):
    """The token sequence of one batch of images; ``L`` = patches over all scales."""

    pixels: torch.Tensor  # (B, L, 3 * patch * patch), channel-major within a patch (what F.unfold gives)
    positions: torch.Tensor  # (B, L) int64 index into the grid x grid spatial embedding
    scales: torch.Tensor  # (B, L) int64 scale index: 0, 1 for the resized scales, 2 for the native image
    valid: torch.Tensor  # (B, L) bool: False for the zero padding of a resized scale


def resize_longer_side(images: torch.Tensor, longer: int) -> torch.Tensor:
    """Bicubic resize (no antialiasing) so that the longer side is ``longer``, the other side rounded."""
    height, width = images.shape[-2:]
    ratio = longer / max(height, width)
    size = (round(height * ratio), round(width * ratio))
    return F.interpolate(images, size, mode="bicubic", align_corners=False)


def patch_grid(height: int, width: int, patch: int) -> tuple[int, int]:
    """Rows and columns of patches: the image is zero-padded up to a multiple of ``patch`` ("SAME")."""
    return math.ceil(height / patch), math.ceil(width / patch)


def cut_patches(images: torch.Tensor, patch: int) -> torch.Tensor:
    """``(B, 3, H, W)`` -> ``(B, rows * cols, 3 * patch^2)``, row-major; the padding is split evenly, the odd
    pixel going to the bottom/right, as TensorFlow's "SAME" padding does."""
    height, width = images.shape[-2:]
    rows, cols = patch_grid(height, width, patch)
    pad_h, pad_w = rows * patch - height, cols * patch - width
    images = F.pad(images, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
    return F.unfold(images, patch, stride=patch).transpose(1, 2)


def hashed_positions(grid: int, rows: int, cols: int) -> torch.Tensor:
    """The spatial-embedding index of each patch of a rows x cols layout, row-major: each axis is mapped onto
    ``grid`` cells by nearest-neighbour resampling (torch's float32 rule, so the cell boundaries are exactly
    pyiqa's), then index = row_cell * grid + col_cell."""
    cells = torch.arange(grid, dtype=torch.float32).view(1, 1, grid)
    row_cells = F.interpolate(cells, size=rows, mode="nearest").view(rows, 1).long()
    col_cells = F.interpolate(cells, size=cols, mode="nearest").view(1, cols).long()
    return (row_cells * grid + col_cells).reshape(-1)


def _scale_tokens(images: torch.Tensor, scale: int, *, patch: int, grid: int, length: int | None) -> MultiScalePatches:
    """The patches of one scale, zero-padded (and masked) up to ``length`` tokens when one is given."""
    batch = images.shape[0]
    pixels = cut_patches(images, patch)
    positions = hashed_positions(grid, *patch_grid(*images.shape[-2:], patch)).to(images.device).expand(batch, -1)
    count = pixels.shape[1]
    padding = 0 if length is None else length - count
    return MultiScalePatches(
        F.pad(pixels, (0, 0, 0, padding)),
        F.pad(positions, (0, padding)),
        F.pad(torch.full_like(positions, scale), (0, padding)),
        F.pad(torch.ones_like(positions, dtype=torch.bool), (0, padding)),
    )


def multiscale_patches(images: torch.Tensor, *, patch: int = 32, grid: int = 10,
                       longer_sides: tuple[int, ...] = LONGER_SIDES) -> MultiScalePatches:
    """MUSIQ's input sequence for ``(B, 3, H, W)`` images: the resized scales (shortest first, each padded to
    ceil(side / patch)^2 tokens), then every patch of the native image. A 480x832 image gives 7x5 = 35 of 49,
    12x7 = 84 of 144, and 15x26 = 390 tokens: 583 in all."""
    parts = [
        _scale_tokens(resize_longer_side(images, side), scale, patch=patch, grid=grid, length=math.ceil(side / patch) ** 2)
        for scale, side in enumerate(sorted(longer_sides))
    ]
    parts.append(_scale_tokens(images, len(longer_sides), patch=patch, grid=grid, length=None))
    return MultiScalePatches(*(torch.cat(field, dim=1) for field in zip(*parts)))


def same_pad(images: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """TensorFlow "SAME" zero padding for a ``kernel``/``stride`` window (the odd pixel bottom/right)."""
    height, width = images.shape[-2:]
    pad_h = max((math.ceil(height / stride) - 1) * stride + kernel - height, 0)
    pad_w = max((math.ceil(width / stride) - 1) * stride + kernel - width, 0)
    return F.pad(images, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))


class StandardizedConv2d(nn.Conv2d):
    """Conv with weight standardisation (BiT's: each filter to zero mean, unit std + 1e-5) and "SAME" padding."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        weight = self.weight - self.weight.mean(dim=(1, 2, 3), keepdim=True)
        weight = weight / (weight.std(dim=(1, 2, 3), keepdim=True) + 1e-5)
        images = same_pad(images, self.kernel_size[0], self.stride[0])
        return F.conv2d(images, weight, self.bias, self.stride)


class Bottleneck(nn.Module):
    """The stem's one bottleneck, ``width`` -> 4 * ``width`` with a projected shortcut (GroupNorm of 32 groups)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        out = 4 * width
        self.conv1 = StandardizedConv2d(width, width, 1, bias=False)
        self.gn1 = nn.GroupNorm(32, width, eps=1e-4)
        self.conv2 = StandardizedConv2d(width, width, 3, bias=False)
        self.gn2 = nn.GroupNorm(32, width, eps=1e-4)
        self.conv3 = StandardizedConv2d(width, out, 1, bias=False)
        self.gn3 = nn.GroupNorm(32, out, eps=1e-4)
        self.conv_proj = StandardizedConv2d(width, out, 1, bias=False)
        self.gn_proj = nn.GroupNorm(32, out, eps=1e-4)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        shortcut = self.gn_proj(self.conv_proj(features))
        features = F.relu(self.gn1(self.conv1(features)))
        features = F.relu(self.gn2(self.conv2(features)))
        return F.relu(self.gn3(self.conv3(features)) + shortcut)


class Attention(nn.Module):
    """Multi-head self-attention; a query or key that is padding scores ``MASKED_SCORE`` before the softmax."""

    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value, self.out = (nn.Linear(hidden, hidden) for _ in range(4))

    def forward(self, tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        batch, length, hidden = tokens.shape

        def split(projection: nn.Linear) -> torch.Tensor:
            return projection(tokens).view(batch, length, self.heads, -1).transpose(1, 2)

        query, key, value = split(self.query), split(self.key), split(self.value)
        scores = query @ key.transpose(-2, -1) * query.shape[-1] ** -0.5
        pairs = valid[:, None, :, None] & valid[:, None, None, :]
        weights = scores.masked_fill(~pairs, MASKED_SCORE).softmax(dim=-1)
        return self.out((weights @ value).transpose(1, 2).reshape(batch, length, hidden))


class Mlp(nn.Module):
    def __init__(self, hidden: int, mlp: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(hidden, mlp), nn.Linear(mlp, hidden)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(tokens)))


class EncoderBlock(nn.Module):
    def __init__(self, size: MusiqSize) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(size.hidden, eps=1e-6)
        self.attention = Attention(size.hidden, size.heads)
        self.norm2 = nn.LayerNorm(size.hidden, eps=1e-6)
        self.mlp = Mlp(size.hidden, size.mlp)

    def forward(self, tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        tokens = tokens + self.attention(self.norm1(tokens), valid)
        return tokens + self.mlp(self.norm2(tokens))


class PositionEmbedding(nn.Module):
    """The hash-based spatial embedding table, ``(1, grid^2, hidden)``."""

    def __init__(self, grid: int, hidden: int) -> None:
        super().__init__()
        self.position_emb = nn.Parameter(0.02 * torch.randn(1, grid * grid, hidden))


class ScaleEmbedding(nn.Module):
    """One embedding per scale, ``(scales, hidden)``."""

    def __init__(self, scales: int, hidden: int) -> None:
        super().__init__()
        self.scale_emb = nn.Parameter(0.02 * torch.randn(scales, hidden))


class TransformerEncoder(nn.Module):
    def __init__(self, size: MusiqSize, scales: int) -> None:
        super().__init__()
        self.posembed_input = PositionEmbedding(size.grid, size.hidden)
        self.scaleembed_input = ScaleEmbedding(scales, size.hidden)
        self.cls = nn.Parameter(torch.zeros(1, 1, size.hidden))
        self.encoder_norm = nn.LayerNorm(size.hidden, eps=1e-6)
        self.transformer = nn.ModuleDict({f"encoderblock_{index}": EncoderBlock(size) for index in range(size.layers)})

    def forward(self, tokens: torch.Tensor, sequence: MultiScalePatches) -> torch.Tensor:
        tokens = tokens + self.posembed_input.position_emb[0, sequence.positions]
        tokens = tokens + self.scaleembed_input.scale_emb[sequence.scales]
        tokens = torch.cat([self.cls.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        valid = F.pad(sequence.valid, (1, 0), value=True)
        for block in self.transformer.values():
            tokens = block(tokens, valid)
        return self.encoder_norm(tokens)


class Musiq(nn.Module):
    """MUSIQ with a one-output (MOS) head; a :class:`benchmarks.vbench.metrics.QualityAssessor`:
    ``(B, 3, h, w)`` float images in [0, 1] -> ``(B,)`` MOS on the training set's scale (SPAQ: 0..100)."""

    def __init__(self, size: MusiqSize, longer_sides: tuple[int, ...] = LONGER_SIDES) -> None:
        super().__init__()
        if size.hidden % HEAD_DIM:
            raise ConfigError(f"MUSIQ hidden size must be a multiple of {HEAD_DIM} (heads of {HEAD_DIM}), got {size.hidden}")
        self.size, self.longer_sides = size, longer_sides
        self.conv_root = StandardizedConv2d(3, STEM_WIDTH, 7, stride=2, bias=False)
        self.gn_root = nn.GroupNorm(32, STEM_WIDTH, eps=1e-6)
        self.block1 = Bottleneck(STEM_WIDTH)
        token_side = size.patch // 4  # the stem halves a patch twice
        self.embedding = nn.Linear(4 * STEM_WIDTH * token_side**2, size.hidden)
        self.transformer_encoder = TransformerEncoder(size, len(longer_sides) + 1)
        self.head = nn.Linear(size.hidden, 1)

    def stem(self, patches: torch.Tensor) -> torch.Tensor:
        """``(N, 3, p, p)`` -> ``(N, 4 * STEM_WIDTH, p / 4, p / 4)``."""
        features = F.relu(self.gn_root(self.conv_root(patches)))
        features = F.max_pool2d(same_pad(features, 3, 2), 3, stride=2)  # zero padding is safe after the ReLU
        return self.block1(features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"MUSIQ takes (B, 3, H, W) images in [0, 1], got shape {tuple(images.shape)}")
        sequence = multiscale_patches((images - 0.5) * 2, patch=self.size.patch, grid=self.size.grid,
                                      longer_sides=self.longer_sides)
        return self.score_sequence(sequence)

    def score_sequence(self, sequence: MultiScalePatches) -> torch.Tensor:
        """``(B,)`` MOS of a token sequence of :func:`multiscale_patches` (pixels already in [-1, 1])."""
        batch, length, _ = sequence.pixels.shape
        features = self.stem(sequence.pixels.reshape(batch * length, 3, self.size.patch, self.size.patch))
        tokens = self.embedding(features.permute(0, 2, 3, 1).reshape(batch, length, -1))  # channel-last, as in TF
        tokens = self.transformer_encoder(tokens, sequence)
        return self.head(tokens[:, 0]).squeeze(-1)


def musiq_size_of(state: dict[str, torch.Tensor], where: str | Path) -> MusiqSize:
    """The sizes of the MUSIQ checkpoint ``state``; a file of another kind is a :class:`CheckpointError`."""
    needed = ("embedding.weight", "transformer_encoder.posembed_input.position_emb",
              "transformer_encoder.scaleembed_input.scale_emb", "transformer_encoder.transformer.encoderblock_0.mlp.fc1.weight",
              "head.weight")
    absent = [key for key in needed if key not in state]
    if absent:
        raise CheckpointError(f"{where} is not a MUSIQ checkpoint (pyiqa layout): no {absent}; "
                              f"its first keys are {sorted(state)[:5]}")
    hidden, embedded = state["embedding.weight"].shape
    token_side = math.isqrt(embedded // (4 * STEM_WIDTH))
    grid = math.isqrt(state["transformer_encoder.posembed_input.position_emb"].shape[1])
    layers = {int(match.group(1)) for key in state
              if (match := re.match(r"transformer_encoder\.transformer\.encoderblock_(\d+)\.", key))}
    outputs, scales = state["head.weight"].shape[0], state["transformer_encoder.scaleembed_input.scale_emb"].shape[0]
    if outputs != 1:
        raise CheckpointError(f"{where}: the head has {outputs} outputs; VBench's MUSIQ is the one-output MOS "
                              "regressor (SPAQ), not a score-distribution head such as AVA's")
    if hidden % HEAD_DIM:
        raise CheckpointError(f"{where}: hidden size {hidden} is not a multiple of the {HEAD_DIM}-channel heads")
    if scales != len(LONGER_SIDES) + 1:
        raise CheckpointError(f"{where}: {scales} scale embeddings; MUSIQ here uses {len(LONGER_SIDES) + 1} "
                              f"(longer sides {LONGER_SIDES} and the native image)")
    return MusiqSize(hidden=hidden, layers=len(layers), patch=4 * token_side, grid=grid,
                     mlp=state["transformer_encoder.transformer.encoderblock_0.mlp.fc1.weight"].shape[0])


def load_musiq(path: str | Path, device: str | torch.device = "cpu") -> Musiq:
    """The MUSIQ of the ``.pth`` state dict at ``path`` (pyiqa's ``musiq_spaq_ckpt-358bb6af.pth`` layout, read
    with ``weights_only=True``), frozen in eval mode on ``device``; sizes come from the tensors, and every key
    must match (a ``module.`` prefix, which pyiqa strips too, is accepted)."""
    state = {key.removeprefix("module."): value for key, value in read_state_dict(Path(path)).items()}
    model = Musiq(musiq_size_of(state, path))
    load_strictly(model, state, path)
    return model.float().to(device).eval().requires_grad_(False)


def write_random_musiq(path: str | Path, size: str = "tiny", *, seed: int = 0) -> Path:
    """Write a random-weight MUSIQ of ``size`` ("tiny" for tests, "real" = the SPAQ checkpoint's sizes) to
    ``path`` as a ``torch.save`` state dict in pyiqa's key layout."""
    if size not in MUSIQ_SIZES:
        raise ConfigError(f"unknown MUSIQ size {size!r}; choose one of {sorted(MUSIQ_SIZES)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Musiq(MUSIQ_SIZES[size])
    with atomic_file(path, "wb") as handle:
        torch.save(model.state_dict(), handle)
    return Path(path)
