"""The ``--weights DIR`` of the VBench harness: VBench's own cache layout, the files in it, and their loaders.

``DIR`` is laid out as VBench's ``$VBENCH_CACHE_DIR`` (default ``~/.cache/vbench``) for its local mode, so an
existing VBench cache works as is (:data:`WEIGHT_FILES`). Nothing is downloaded: a missing file is a
:class:`reward.errors.ConfigError` naming the path it should have and where to get it. Each file is hashed
(sha256) and compared with the published file's digest where one is published (the CLIP URLs carry it, the
LAION head's is recorded in docs/vbench/weights.md); a different file loads — random weights are what smoke
runs use — but is logged and recorded as "not the published weights" (:func:`check_weights`), never passed
silently. User guide: docs/vbench/weights.md.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch

from reward.errors import CheckpointError, ConfigError
from reward.tiny_clip import CLIP_VIT_B_32, CLIP_VIT_L_14, ClipSize

from .backbones import (
    DINO_VIT_B_16,
    TINY_DINO,
    DinoSize,
    OpenAIClipSize,
    load_aesthetic_head,
    load_dino,
    load_openai_clip_image_tower,
    write_aesthetic_head,
    write_dino,
    write_openai_clip,
)

if TYPE_CHECKING:
    from .metrics import Extractors

logger = logging.getLogger(__name__)

NOT_PUBLISHED = "not the published weights"


@dataclass(frozen=True)
class WeightFile:
    """One file of the layout: the ``Extractors`` field it builds, its path under ``DIR``, where to get it,
    and the sha256 of the published file (None where no digest is published)."""

    field: str
    relative_path: str
    url: str
    sha256: str | None = None
    how: str = "download it"


_CLIP_URL = "https://openaipublic.azureedge.net/clip/models/{}/{}"
_B32_SHA = "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af"
_L14_SHA = "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836"

WEIGHT_FILES: dict[str, WeightFile] = {entry.field: entry for entry in (
    WeightFile("dino", "dino_model/dino_vitbase16_pretrain.pth",
               "https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth"),
    WeightFile("clip_b32", "clip_model/ViT-B-32.pt", _CLIP_URL.format(_B32_SHA, "ViT-B-32.pt"), _B32_SHA),
    WeightFile("clip_l14", "clip_model/ViT-L-14.pt", _CLIP_URL.format(_L14_SHA, "ViT-L-14.pt"), _L14_SHA),
    WeightFile("aesthetic_head", "aesthetic_model/emb_reader/sa_0_4_vit_l_14_linear.pth",
               "https://raw.githubusercontent.com/LAION-AI/aesthetic-predictor/main/sa_0_4_vit_l_14_linear.pth",
               "2cd4e60f4f24ae3bcd57b847b13c1f3ba27edc28cc1a7f9ce74ee9f421243cba"),
    WeightFile("musiq", "pyiqa_model/musiq_spaq_ckpt-358bb6af.pth",
               "https://github.com/chaofengc/IQA-PyTorch/releases/download/v0.1-weights/musiq_spaq_ckpt-358bb6af.pth"),
    WeightFile("raft", "raft_model/models/raft-things.pth",
               "https://dl.dropboxusercontent.com/s/4j4z58wuv8o0mfz/models.zip",
               how="download the zip and unzip it there (it holds models/raft-things.pth)"),
)}


@dataclass(frozen=True)
class RandomSizes:
    """The architecture sizes :func:`write_random_weights` writes at."""

    dino: DinoSize
    clip_b32: OpenAIClipSize
    clip_l14: OpenAIClipSize


def _tiny_clip(patch_size: int) -> OpenAIClipSize:
    """One 64-wide block per tower at the real input size (224 px), so VBench's preprocessing fits it."""
    towers = ClipSize(32, 64, 1, 1, 64, 1, 1, patch_size=patch_size, image_size=224)
    return OpenAIClipSize(towers, vocab_size=512)


RANDOM_SIZES: dict[str, RandomSizes] = {
    "tiny": RandomSizes(TINY_DINO, _tiny_clip(32), _tiny_clip(14)),
    "real": RandomSizes(DINO_VIT_B_16, OpenAIClipSize(CLIP_VIT_B_32), OpenAIClipSize(CLIP_VIT_L_14)),
}


def weight_path(weights_dir: Path, field: str) -> Path:
    """Where the file of the extractor ``field`` lives under ``weights_dir``."""
    return Path(weights_dir) / WEIGHT_FILES[field].relative_path


def require_weight_files(weights_dir: Path, fields: Sequence[str]) -> dict[str, Path]:
    """The paths of ``fields``' files; one :class:`ConfigError` lists every missing file with its source."""
    paths = {field: weight_path(weights_dir, field) for field in fields}
    missing = [f"{path} ({WEIGHT_FILES[field].how}: {WEIGHT_FILES[field].url})"
               for field, path in paths.items() if not path.is_file()]
    if missing:
        raise ConfigError(
            f"--weights {weights_dir} lacks {len(missing)} file(s) in VBench's cache layout (nothing is downloaded; "
            "see docs/vbench/weights.md): " + "; ".join(missing)
        )
    return paths


def sha256_of(path: Path) -> str:
    """The file's sha256, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class WeightRecord:
    """What the results record about one weight file. ``published`` is None where no digest is published."""

    field: str
    path: str
    sha256: str
    published_sha256: str | None
    published: bool | None
    warning: str | None


def weight_record(field: str, path: Path, published_sha256: str | None) -> WeightRecord:
    """Hash ``path`` and compare with ``published_sha256``; a mismatch is logged and carries a warning."""
    digest = sha256_of(path)
    published = None if published_sha256 is None else digest == published_sha256
    warning = None
    if published is False:
        warning = f"{path}: {NOT_PUBLISHED} (sha256 {digest}, published {published_sha256}); fine for a smoke run"
        logger.warning(warning)
    return WeightRecord(field, str(path), digest, published_sha256, published, warning)


def check_weights(weights_dir: Path, fields: Sequence[str]) -> list[WeightRecord]:
    """Records of ``fields``' files (all must exist), for the results JSON."""
    paths = require_weight_files(weights_dir, fields)
    return [weight_record(field, path, WEIGHT_FILES[field].sha256) for field, path in paths.items()]


def required_fields(dimensions: Sequence[str]) -> list[str]:
    """The ``Extractors`` fields the dimensions need, in :data:`WEIGHT_FILES` order."""
    from .metrics import Extractors

    empty = Extractors(**dict.fromkeys(WEIGHT_FILES))  # works whether ``required`` is static or per instance
    needed = {field for dimension in dimensions for field in empty.required(dimension)}
    return [field for field in WEIGHT_FILES if field in needed]


def _loaders(device: torch.device, dtype: torch.dtype | None) -> dict[str, Callable[[Path], Any]]:
    """One loader per ``Extractors`` field (MUSIQ and RAFT imported only when needed)."""

    def musiq(path: Path) -> Any:
        from .musiq import load_musiq

        return load_musiq(path, device)

    def raft(path: Path) -> Any:
        from .raft import load_raft

        return load_raft(path, device)

    return {
        "dino": lambda path: load_dino(path, device=device, dtype=dtype or torch.float32),
        "clip_b32": lambda path: load_openai_clip_image_tower(path, patch_size=32, device=device, dtype=dtype),
        "clip_l14": lambda path: load_openai_clip_image_tower(path, patch_size=14, device=device, dtype=dtype),
        "aesthetic_head": lambda path: load_aesthetic_head(path, device=device),
        "musiq": musiq,
        "raft": raft,
    }


def load_extractors(
    weights_dir: Path, dimensions: Sequence[str], *, device: str | torch.device,
    dtype: str | torch.dtype | None = None,
) -> Extractors:
    """An ``Extractors`` holding what ``dimensions`` need, loaded from ``weights_dir`` (the rest None).

    ``dtype`` applies to DINO and the CLIP towers; None runs each as VBench does (DINO fp32; CLIP in OpenAI's
    fp16 on a GPU, fp32 on the CPU). The LAION head always runs in fp32; MUSIQ and RAFT choose their own.
    Every file is checked to exist before any is loaded, and hashed (:func:`check_weights`).
    """
    from .metrics import Extractors

    device = torch.device(device)
    resolved = resolve_dtype(dtype)
    fields = required_fields(dimensions)
    check_weights(weights_dir, fields)
    loaders = _loaders(device, resolved)
    loaded = {field: loaders[field](weight_path(weights_dir, field)) for field in fields}
    if "clip_l14" in loaded and "aesthetic_head" in loaded:
        _check_head_fits(loaded["clip_l14"].output_dim, loaded["aesthetic_head"].input_dim, weights_dir)
    return Extractors(**{**dict.fromkeys(WEIGHT_FILES), **loaded})


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """None, a floating torch dtype, or its name (``"float16"``); anything else is a :class:`ConfigError`."""
    if dtype is None or isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        return dtype
    resolved = getattr(torch, dtype, None) if isinstance(dtype, str) else None
    if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
        raise ConfigError(f"dtype must name a floating-point torch dtype (float32, float16, bfloat16), got {dtype!r}")
    return resolved


def _check_head_fits(feature_dim: int, head_dim: int, weights_dir: Path) -> None:
    """The LAION head reads the ViT-L/14 embedding: their widths must agree (a tiny head on a real L/14 not)."""
    if feature_dim != head_dim:
        raise CheckpointError(
            f"{weight_path(weights_dir, 'aesthetic_head')} takes {head_dim}-d features but "
            f"{weight_path(weights_dir, 'clip_l14')} gives {feature_dim}-d ones (files of different sizes mixed?)"
        )


def write_backbone_weights(weights_dir: Path, *, size: str = "tiny", seed: int = 0) -> Path:
    """The DINO, CLIP and LAION-head files of :func:`write_random_weights` (the files this module loads)."""
    if size not in RANDOM_SIZES:
        raise ConfigError(f"size must be one of {sorted(RANDOM_SIZES)}, got {size!r}")
    sizes = RANDOM_SIZES[size]
    write_dino(weight_path(weights_dir, "dino"), sizes.dino, seed=seed)
    write_openai_clip(weight_path(weights_dir, "clip_b32"), sizes.clip_b32, seed=seed)
    write_openai_clip(weight_path(weights_dir, "clip_l14"), sizes.clip_l14, seed=seed + 1)
    write_aesthetic_head(weight_path(weights_dir, "aesthetic_head"), sizes.clip_l14.towers.projection_dim, seed=seed)
    return Path(weights_dir)


def write_random_weights(weights_dir: Path, *, size: str = "tiny", seed: int = 0) -> Path:
    """Every file of the layout with random weights in the upstream formats, at ``size`` "tiny" (tests, demo)
    or "real" (the published architectures, for a GPU throughput benchmark). Returns ``weights_dir``. Random
    weights measure nothing: results computed with them are smoke runs, and :func:`check_weights` records
    them as not published."""
    write_backbone_weights(weights_dir, size=size, seed=seed)
    from .musiq import write_random_musiq
    from .raft import write_random_raft

    for field, writer in (("musiq", write_random_musiq), ("raft", write_random_raft)):
        path = weight_path(weights_dir, field)
        path.parent.mkdir(parents=True, exist_ok=True)
        writer(path, size=size)
    return Path(weights_dir)
