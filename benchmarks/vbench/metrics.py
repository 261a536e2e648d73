"""VBench's six quality dimensions as pure functions of decoded frames and injected feature extractors.

Notation: T frames, N images per extractor call, (H, W) a frame's size. ``frames`` are RGB ``(T, 3, H, W)``,
uint8 or float in 0..255: every frame of the file at its native resolution, as VBench reads them (decord
for four dimensions, OpenCV for dynamic degree and temporal flickering). Each function applies VBench's
preprocessing for its dimension itself, so an extractor receives exactly the tensor VBench's model
receives; extractors hold weights only (their :class:`typing.Protocol` s are below). Results are per video;
aggregates and normalisation live in :mod:`benchmarks.vbench.results`.

Behaviour matched: Vchitect/VBench at commit 45e79ec (``vbench/subject_consistency.py``,
``background_consistency.py``, ``aesthetic_quality.py``, ``imaging_quality.py``, ``dynamic_degree.py``,
``temporal_flickering.py``, transforms in ``vbench/utils.py``), the same algorithms as the PyPI release
0.1.5. Our code, not theirs; where we differ it is said in the function (docs/vbench/harness.md lists it).
No function here reads a file, logs or holds a model: the job (:mod:`benchmarks.vbench.job`) does. Extractor
calls run without autograd (nothing here is trained).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms import InterpolationMode
from torchvision.transforms.functional import center_crop, normalize, resize

DIMENSIONS = (
    "subject_consistency",
    "background_consistency",
    "aesthetic_quality",
    "imaging_quality",
    "dynamic_degree",
    "temporal_flickering",
)

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
ENCODER_SIDE = 224  # DINO: shorter side; CLIP: shorter side, then a square centre crop
AESTHETIC_SCALE = 10.0  # the LAION head predicts 1..10; VBench reports head / 10
IMAGING_LONGER_SIDE = 512  # VBench's default imaging preprocessing, 'longer'
FLOW_FPS = 8.0  # dynamic degree keeps about 8 frames per second of the file
FLOW_PAD_MULTIPLE = 8  # RAFT's feature stride; frames are padded to it, as RAFT's InputPadder does
MOTION_TOP_FRACTION = 0.05  # a pair's score: mean of its largest 5 % flow magnitudes
MOTION_PIXELS_PER_256 = 6.0  # threshold: 6 px per 256 px of the shorter side
MOTION_PAIRS_PER_16_FRAMES = 4.0  # pairs above threshold needed: 4 per 16 kept frames


class FrameEncoder(Protocol):
    """Images ``(N, 3, h, w)`` float32, already normalised by the metric, to raw features ``(N, D)``
    (the metric L2-normalises). DINO ViT-B/16 (CLS token after the final norm), CLIP ViT-B/32 and CLIP
    ViT-L/14 image towers (``encode_image``)."""

    def __call__(self, images: Tensor) -> Tensor: ...


class AestheticHead(Protocol):
    """LAION aesthetic predictor v1: L2-normalised CLIP ViT-L/14 features ``(N, 768)`` float32 to ``(N,)``."""

    def __call__(self, features: Tensor) -> Tensor: ...


class QualityAssessor(Protocol):
    """MUSIQ trained on SPAQ: one image ``(1, 3, h, w)`` float32 in [0, 1] to its MOS ``(1,)``, about 0..100."""

    def __call__(self, image: Tensor) -> Tensor: ...


class FlowEstimator(Protocol):
    """RAFT (20 refinement iterations, test mode): two frames ``(1, 3, H, W)`` float32 in 0..255, H and W
    multiples of 8, to the flow ``(1, 2, H, W)`` from the first to the second, in pixels."""

    def __call__(self, frame1: Tensor, frame2: Tensor) -> Tensor: ...


_REQUIRED: dict[str, tuple[str, ...]] = {
    "subject_consistency": ("dino",),
    "background_consistency": ("clip_b32",),
    "aesthetic_quality": ("clip_l14", "aesthetic_head"),
    "imaging_quality": ("musiq",),
    "dynamic_degree": ("raft",),
    "temporal_flickering": (),
}


def check_dimensions(dimensions: tuple[str, ...] | list[str]) -> None:
    """Raise ValueError naming every unknown dimension and the known ones."""
    unknown = [name for name in dimensions if name not in DIMENSIONS]
    if unknown:
        raise ValueError(f"unknown VBench dimension(s) {', '.join(unknown)}; known: {', '.join(DIMENSIONS)}")


@dataclass(frozen=True)
class Extractors:
    """The frozen models the dimensions need; a field stays None when no requested dimension uses it."""

    dino: FrameEncoder | None = None
    clip_b32: FrameEncoder | None = None
    clip_l14: FrameEncoder | None = None
    aesthetic_head: AestheticHead | None = None
    musiq: QualityAssessor | None = None
    raft: FlowEstimator | None = None

    @staticmethod
    def required(dimension: str) -> tuple[str, ...]:
        """The fields ``dimension`` needs (temporal flickering: none)."""
        check_dimensions([dimension])
        return _REQUIRED[dimension]

    def missing(self, dimensions: tuple[str, ...] | list[str]) -> list[str]:
        """The fields the ``dimensions`` need that are None, in field order."""
        needed = {name for dimension in dimensions for name in self.required(dimension)}
        return [f.name for f in fields(self) if f.name in needed and getattr(self, f.name) is None]


class VideoScore(NamedTuple):
    """One video's number on one dimension, as VBench stores it per video (imaging quality: the raw MOS;
    dynamic degree: 1.0 or 0.0). The consistency dimensions also keep the sum of their per-pair
    similarities and the pair count (frames − 1): their aggregate weights each video by its pairs."""

    value: float
    pairs: int | None = None
    similarity_sum: float | None = None


# ----- preprocessing (VBench's per-dimension transforms) ------------------------------------------------


def shorter_side_size(height: int, width: int, *, side: int) -> tuple[int, int]:
    """torchvision's ``Resize(side)`` rule: the shorter side becomes ``side``, the longer ``int(side·long/short)``
    (480×832 → 224×388)."""
    if height <= width:
        return side, int(side * width / height)
    return int(side * height / width), side


def imaging_size(height: int, width: int, *, longer_side: int = IMAGING_LONGER_SIDE) -> tuple[int, int]:
    """VBench's ``'longer'`` mode: a frame whose longer side exceeds ``longer_side`` is scaled by
    ``longer_side / max(h, w)`` with each side truncated by ``int`` (480×832 → 295×512); smaller frames keep
    their size."""
    if max(height, width) <= longer_side:
        return height, width
    scale = longer_side / max(height, width)
    return int(scale * height), int(scale * width)


def dino_inputs(frames: Tensor) -> Tensor:
    """Subject consistency: shorter side → 224 bilinear without antialiasing and without a crop (480×832 →
    224×388; DINO's patch convolution drops the 4 columns past 384), /255, ImageNet normalisation."""
    size = shorter_side_size(*frames.shape[-2:], side=ENCODER_SIDE)
    images = resize(frames.float(), list(size), interpolation=InterpolationMode.BILINEAR, antialias=False)
    return normalize(images / 255.0, IMAGENET_MEAN, IMAGENET_STD)


def clip_inputs(frames: Tensor) -> Tensor:
    """Background consistency and aesthetic quality: shorter side → 224 bicubic without antialiasing (on
    float 0..255, unclamped, as VBench's float frames), centre crop 224, /255, CLIP normalisation."""
    size = shorter_side_size(*frames.shape[-2:], side=ENCODER_SIDE)
    images = resize(frames.float(), list(size), interpolation=InterpolationMode.BICUBIC, antialias=False)
    return normalize(center_crop(images, [ENCODER_SIDE, ENCODER_SIDE]) / 255.0, CLIP_MEAN, CLIP_STD)


def imaging_inputs(frames: Tensor) -> Tensor:
    """Imaging quality: :func:`imaging_size` with bilinear resizing (no antialiasing), then /255."""
    height, width = frames.shape[-2:]
    size = imaging_size(height, width)
    images = frames.float()
    if size != (height, width):
        images = resize(images, list(size), interpolation=InterpolationMode.BILINEAR, antialias=False)
    return images / 255.0


# ----- subject and background consistency ------------------------------------------------------------


def cosine(first: Tensor, second: Tensor) -> Tensor:
    """Row-wise cosine ``a·b / √((a·a)(b·b))`` in float64 (0 where a row is zero).

    Written this way a row compared with itself gives exactly 1 (√(x²) = |x| in IEEE arithmetic), so a
    static clip scores exactly 1; VBench's float32 ``F.cosine_similarity`` of L2-normalised rows gives
    1 − 6e-8 there and agrees with this elsewhere to float32 rounding.
    """
    first, second = first.double(), second.double()
    dot = (first * second).sum(dim=-1)
    norms = (first * first).sum(dim=-1) * (second * second).sum(dim=-1)
    return torch.where(norms > 0, dot / norms.sqrt(), torch.zeros_like(dot))


def first_previous_similarities(features: Tensor) -> Tensor:
    """Per frame i = 1..T−1: s_i = ½·[max(0, cos(f_{i−1}, f_i)) + max(0, cos(f_0, f_i))], float64 ``(T−1,)``.

    The features ``(T, D)`` need no normalisation first: the cosine is scale-free (VBench L2-normalises,
    which changes nothing here).
    """
    if len(features) < 2:
        raise ValueError(f"consistency needs at least 2 frames, got {len(features)}")
    previous = cosine(features[:-1], features[1:]).clamp(min=0)
    first = cosine(features[:1].expand_as(features[1:]), features[1:]).clamp(min=0)
    return (previous + first) / 2


def consistency(features: Tensor) -> VideoScore:
    """A video's consistency: the mean of :func:`first_previous_similarities`, with its sum and pair count."""
    similarities = first_previous_similarities(features)
    total = float(similarities.sum())
    return VideoScore(value=total / len(similarities), pairs=len(similarities), similarity_sum=total)


@torch.no_grad()
def encode_frames(
    frames: Tensor, encoder: FrameEncoder, *, preprocess: Callable[[Tensor], Tensor], batch_size: int
) -> Tensor:
    """``encoder(preprocess(frames))`` in batches of ``batch_size`` frames, as float32 ``(T, D)``.

    VBench feeds DINO one frame at a time and CLIP all frames at once; batching changes nothing but float
    rounding.
    """
    return torch.cat([encoder(preprocess(frames[start : start + batch_size])).float()
                      for start in range(0, len(frames), batch_size)])


def subject_consistency(frames: Tensor, dino: FrameEncoder, *, batch_size: int) -> VideoScore:
    """DINO ViT-B/16 features of every frame (:func:`dino_inputs`), then :func:`consistency`."""
    return consistency(encode_frames(frames, dino, preprocess=dino_inputs, batch_size=batch_size))


def background_consistency(frames: Tensor, clip_b32: FrameEncoder, *, batch_size: int) -> VideoScore:
    """CLIP ViT-B/32 image features of every frame (:func:`clip_inputs`), then :func:`consistency`."""
    return consistency(encode_frames(frames, clip_b32, preprocess=clip_inputs, batch_size=batch_size))


# ----- aesthetic and imaging quality ------------------------------------------------------------------


@torch.no_grad()
def aesthetic_quality(
    frames: Tensor, clip_l14: FrameEncoder, *, head: AestheticHead, batch_size: int
) -> VideoScore:
    """Mean over every frame of head(L2-normalised CLIP ViT-L/14 features) / 10 (≈0.3–0.75 in practice)."""
    features = F.normalize(encode_frames(frames, clip_l14, preprocess=clip_inputs, batch_size=batch_size), dim=-1)
    scores = head(features).reshape(-1).double() / AESTHETIC_SCALE
    return VideoScore(value=float(scores.mean()))


@torch.no_grad()
def imaging_quality(frames: Tensor, musiq: QualityAssessor) -> VideoScore:
    """Mean MOS over every frame, one frame per call as VBench runs MUSIQ (:func:`imaging_inputs`); the raw
    0..100 value, as VBench stores it per video (the aggregate divides by 100)."""
    images = imaging_inputs(frames)
    total = sum(float(musiq(images[index : index + 1]).reshape(())) for index in range(len(images)))
    return VideoScore(value=total / len(images))


# ----- dynamic degree -----------------------------------------------------------------------------------


def flow_frame_interval(fps: float) -> int:
    """Keep every ``max(1, round(fps / 8))``-th frame (Python's round: half to even): 8, 16, 24, 30 fps →
    1, 2, 3, 4. The fps is the container's; the same frames at another stated fps are judged differently."""
    if not fps > 0:
        raise ValueError(f"the frame rate must be positive, got {fps}")
    return max(1, round(fps / FLOW_FPS))


class MotionRule(NamedTuple):
    """When a video counts as dynamic: at least ``required_pairs`` pairs score above ``threshold`` pixels."""

    threshold: float
    required_pairs: int


def motion_rule(height: int, width: int, *, kept_frames: int) -> MotionRule:
    """VBench's thresholds: 6·min(H, W)/256 px (480p: 11.25, 720p: 16.875) and ``round(4·n/16)`` pairs for
    n kept frames (Python's round, half to even: n = 10 → 2, n = 41 → 10)."""
    return MotionRule(
        threshold=MOTION_PIXELS_PER_256 * (min(height, width) / 256.0),
        required_pairs=round(MOTION_PAIRS_PER_16_FRAMES * (kept_frames / 16.0)),
    )


def pad_for_flow(frames: Tensor) -> Tensor:
    """Replicate-pad ``(N, 3, H, W)`` to multiples of 8, split evenly (the odd pixel at the bottom / right),
    as RAFT's ``InputPadder`` does before VBench's flow."""
    height, width = frames.shape[-2:]
    pad_h, pad_w = -height % FLOW_PAD_MULTIPLE, -width % FLOW_PAD_MULTIPLE
    if not (pad_h or pad_w):
        return frames
    return F.pad(frames, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2], mode="replicate")


def top_motion(flow: Tensor) -> float:
    """A pair's score: the mean of the largest ``int(0.05·H·W)`` flow magnitudes √(u² + v²) of ``(1, 2, H, W)``
    (over the padded frame, as VBench scores it)."""
    magnitudes = flow[0].float().square().sum(dim=0).sqrt().reshape(-1)
    count = int(magnitudes.numel() * MOTION_TOP_FRACTION)
    if count == 0:
        raise ValueError(f"a {tuple(flow.shape[-2:])} flow has no top 5 % (fewer than 20 pixels)")
    return float(magnitudes.topk(count).values.double().mean())


class MotionScores(NamedTuple):
    """Dynamic degree's per-pair scores of one video and the rule they are judged by."""

    pair_scores: list[float]
    rule: MotionRule
    interval: int

    @property
    def dynamic(self) -> bool:
        """True when at least ``rule.required_pairs`` pairs move more than ``rule.threshold`` (a clip of one
        kept frame has no pair and is static; VBench's loop answers the same)."""
        moving = sum(score > self.rule.threshold for score in self.pair_scores)
        return bool(self.pair_scores) and moving >= self.rule.required_pairs


@torch.no_grad()
def motion_scores(frames: Tensor, raft: FlowEstimator, *, fps: float) -> MotionScores:
    """RAFT flow between consecutive kept frames (every :func:`flow_frame_interval`-th, at full resolution,
    float 0..255, padded by :func:`pad_for_flow`), each pair scored by :func:`top_motion`."""
    interval = flow_frame_interval(fps)
    kept = frames[::interval]
    padded = pad_for_flow(kept.float())
    scores = [top_motion(raft(padded[index : index + 1], padded[index + 1 : index + 2]))
              for index in range(len(padded) - 1)]
    return MotionScores(pair_scores=scores, rule=motion_rule(*frames.shape[-2:], kept_frames=len(kept)), interval=interval)


def dynamic_degree(frames: Tensor, raft: FlowEstimator, *, fps: float) -> VideoScore:
    """1.0 for a dynamic video, 0.0 for a static one (:class:`MotionScores`)."""
    return VideoScore(value=float(motion_scores(frames, raft, fps=fps).dynamic))


# ----- temporal flickering ------------------------------------------------------------------------------


def temporal_flickering(frames: Tensor) -> VideoScore:
    """(255 − m)/255, m the mean over consecutive frame pairs of their mean absolute pixel difference (all
    frames, all channels, 0..255): 1 for a constant clip. VBench meant it for static-scene prompts."""
    if len(frames) < 2:
        raise ValueError(f"temporal flickering needs at least 2 frames, got {len(frames)}")
    values = frames.to(torch.int16) if frames.dtype == torch.uint8 else frames.double()
    differences = (values[1:] - values[:-1]).abs()
    per_pair = differences.sum(dim=(1, 2, 3), dtype=torch.float64) / differences[0].numel()
    return VideoScore(value=(255.0 - float(per_pair.mean())) / 255.0)


# ----- one dimension of one video ---------------------------------------------------------------------


def score_video(
    dimension: str, frames: Tensor, *, fps: float, extractors: Extractors, batch_size: int
) -> VideoScore:
    """``dimension`` of one video: every frame ``(T, 3, H, W)`` in 0..255 and the container's fps.

    Raises:
        ValueError: an unknown dimension, or an extractor it needs is None.
    """
    missing = extractors.missing([dimension])
    if missing:
        raise ValueError(f"{dimension} needs the extractor(s) {', '.join(missing)}")
    if dimension == "subject_consistency":
        return subject_consistency(frames, extractors.dino, batch_size=batch_size)
    if dimension == "background_consistency":
        return background_consistency(frames, extractors.clip_b32, batch_size=batch_size)
    if dimension == "aesthetic_quality":
        return aesthetic_quality(frames, extractors.clip_l14, head=extractors.aesthetic_head, batch_size=batch_size)
    if dimension == "imaging_quality":
        return imaging_quality(frames, extractors.musiq)
    if dimension == "dynamic_degree":
        return dynamic_degree(frames, extractors.raft, fps=fps)
    return temporal_flickering(frames)
