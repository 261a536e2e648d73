"""CLIP-family image scorers applied frame by frame: ``clip_score``, ``pickscore``, ``hpsv2`` and ``aesthetic``.

Each scores every sampled frame of a video (against the prompt, except ``aesthetic``); the video's reward is
the mean over its frames, and ``sub_scores`` holds the lowest and highest frame score (``frame_min``,
``frame_max``). User guide: docs/reward_zoo/clip_scorers.md.

**Which CLIP implementation.** transformers' ``CLIPModel`` runs ``clip_score``, ``pickscore`` and the
``aesthetic`` backbone, because their usual weights are published in that format (``openai/clip-vit-*``,
``yuvalkirstain/PickScore_v1``). ``hpsv2`` runs on open_clip, because HPSv2's weights exist only as an
open_clip state dict (``HPS_v2.1_compressed.pt`` in ``xswu/HPSv2``); open_clip is imported only when an
``hpsv2`` scorer is built, so ``import reward`` stays cheap.

**Frames.** Videos go through :func:`reward.video.load_video` with :func:`frame_spec`: 2 frames per second,
4 to 32 frames (options ``fps``, ``max_frames``), at most 448x448 pixels per frame — enough for every CLIP
processor, which resizes to 224 or 336 px anyway. Each frame then goes through the model's own image
preprocessing: the checkpoint's ``CLIPImageProcessor`` (resize the short side, centre-crop, normalise) for
the transformers models, HPSv2's letterbox (:func:`reward.clip_encoders.letterbox`) for ``hpsv2``. Prompts go
through the model's tokenizer, truncated to its 77 positions (75 prompt tokens between start and end), as
every CLIP scorer does. Frames of ``batch_size`` videos go through the image tower in one forward pass.

**Scores** (``cos`` = cosine of the L2-normalised image and text embeddings, computed in float32):

- ``clip_score``: ``formula: clipscore`` (default) = 2.5 * max(cos, 0), CLIPScore of Hessel et al. 2021
  ("CLIPScore: A Reference-free Evaluation Metric for Image Captioning", eq. 1, ViT-B/32 — the default
  ``path``); ``formula: cosine`` = cos, as flow_grpo's ``ClipScorer`` (``openai/clip-vit-large-patch14``).
- ``pickscore``: ``scale`` * logit_scale.exp() * cos (Kirstain et al. 2023, Pick-a-Pic; its README's
  inference code); raw by default (about 18-24), flow_grpo's ``PickScoreScorer`` uses ``scale`` = 1/26.
- ``hpsv2``: cos of the open_clip ViT-H-14 fine-tuned by HPSv2 (Wu et al. 2023), about 0.2-0.35, with the
  preprocessing of HPSv2's ``hpsv2/img_score.py`` (``create_model_and_transforms(..., light_augmentation=True)``).
- ``aesthetic``: the LAION improved-aesthetic-predictor MLP (github.com/christophschuhmann/
  improved-aesthetic-predictor, ``simple_inference.py``) on the L2-normalised CLIP ViT-L/14 image
  embedding, about 1-10; no prompt.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import torch
from torch import nn

from .base import RewardOutput, ScoredItem, register_reward, sampled_batches
from .clip_encoders import (
    FrameEncoder,
    load_hf_clip,
    load_open_clip,
    load_strictly,
    read_state_dict,
    resolve_weights_file,
    torch_dtype,
)
from .errors import ConfigError
from .scoring import default_device
from .video import DecodeLimits, VideoSource, VideoSpec


CLIPSCORE_WEIGHT = 2.5  # Hessel et al. 2021, eq. 1
MIN_FRAMES = 4

# (N, D) unit image embeddings, (N, D) unit text embeddings of each frame's prompt (None if unused) -> (N,)
FrameScore = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def frame_spec(fps: float = 2.0, max_frames: int = 32) -> VideoSpec:
    """How the CLIP scorers sample video: ``fps`` frames per second, 4 (or ``max_frames`` if fewer) to
    ``max_frames`` frames, at most 448x448 pixels per frame, sizes kept to multiples of 32 px."""
    try:
        return VideoSpec(
            fps=fps, min_frames=min(MIN_FRAMES, max_frames), max_frames=max_frames,
            min_pixels=32 * 32, max_pixels=448 * 448, pixel_factor=32,
        )
    except ValueError as error:
        raise ConfigError(f"fps / max_frames: {error}") from error


class AestheticHead(nn.Module):
    """The LAION improved-aesthetic-predictor: five Linear layers with no activation between them (the
    released ``sac+logos+ava1-l14-linearMSE.pth`` is the "linear" variant), so a linear map of the embedding.
    The dropouts do nothing at inference; they keep the ``nn.Sequential`` indices (``layers.0/2/4/6/7``) of
    the released state dict."""

    def __init__(self, input_dim: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1),
        )

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``(N, input_dim)`` unit image embeddings -> ``(N,)`` scores."""
        return self.layers(embeddings).squeeze(-1)


def cosine(images: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
    """Row-wise dot product of unit vectors."""
    return (images * texts).sum(dim=-1)


def clipscore(images: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
    """CLIPScore = 2.5 * max(cos, 0) (Hessel et al. 2021, eq. 1)."""
    return CLIPSCORE_WEIGHT * cosine(images, texts).clamp(min=0)


def scaled_cosine(images: torch.Tensor, texts: torch.Tensor, *, factor: float) -> torch.Tensor:
    return factor * cosine(images, texts)


def aesthetic_scores(images: torch.Tensor, texts: torch.Tensor | None, *, head: AestheticHead) -> torch.Tensor:
    """The predictor scores the image embedding alone; ``texts`` is unused."""
    return head(images)


CLIP_SCORE_FORMULAS: dict[str, FrameScore] = {"clipscore": clipscore, "cosine": cosine}


class FrameWiseReward:
    """A reward model that scores each sampled frame and averages over the video's frames."""

    def __init__(
        self,
        name: str,
        encoder: FrameEncoder,
        frame_score: FrameScore,
        *,
        uses_prompt: bool = True,
        spec: VideoSpec,
        batch_size: int,
        skip_invalid: bool,
        decode_limits: DecodeLimits,
    ) -> None:
        self.name, self.encoder, self.frame_score, self.uses_prompt = name, encoder, frame_score, uses_prompt
        self.spec, self.batch_size, self.skip_invalid, self.decode_limits = spec, batch_size, skip_invalid, decode_limits

    def score(self, videos: Sequence[VideoSource], prompts: Sequence[str]) -> RewardOutput:
        if len(videos) != len(prompts):
            raise ValueError(f"got {len(videos)} videos and {len(prompts)} prompts")
        items: list[ScoredItem | None] = [None] * len(videos)
        for loaded in sampled_batches(videos, self.spec, self.decode_limits, batch_size=self.batch_size,
                                      skip_invalid=self.skip_invalid, items=items):
            per_frame = self.frame_scores([clip.frames for _, clip in loaded], [prompts[i] for i, _ in loaded])
            for (index, _), scores in zip(loaded, per_frame):
                sub_scores = {"frame_min": float(scores.min()), "frame_max": float(scores.max())}
                items[index] = ScoredItem(reward=float(scores.mean()), sub_scores=sub_scores)
        return RewardOutput(items)

    @torch.no_grad()
    def frame_scores(self, videos: Sequence[torch.Tensor], prompts: Sequence[str]) -> list[torch.Tensor]:
        """Float32 score of every frame of each video (frames as :func:`load_video` returns them)."""
        frames = [video.round().clamp(0, 255).to(torch.uint8) for video in videos]
        counts = [len(video) for video in frames]
        images = self.encoder.encode_images(frames)
        texts = None
        if self.uses_prompt:
            per_video = self.encoder.encode_texts(prompts)
            texts = per_video.repeat_interleave(torch.tensor(counts, device=per_video.device), dim=0)
        return list(self.frame_score(images, texts).float().cpu().split(counts))


def load_aesthetic_head(path: Path, input_dim: int) -> AestheticHead:
    """The predictor's MLP in float32; ``input_dim`` is the CLIP backbone's embedding width, so a head made for
    another backbone fails on the shape of ``layers.0.weight``."""
    head = AestheticHead(input_dim)
    load_strictly(head, {key: value.float() for key, value in read_state_dict(path).items()}, path)
    return head.eval()


class _Settings(NamedTuple):
    """The options every CLIP scorer shares, checked before any weights load."""

    spec: VideoSpec
    device: torch.device
    dtype: torch.dtype
    batch_size: int
    skip_invalid: bool
    decode_limits: DecodeLimits


def _settings(
    *, fps: float, max_frames: int, batch_size: int, device: str | torch.device | None,
    dtype: str | torch.dtype | None, skip_invalid: bool, decode_limits: DecodeLimits | Mapping[str, Any] | None,
) -> _Settings:
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(decode_limits, Mapping):
        decode_limits = DecodeLimits(**decode_limits)
    resolved = torch.device(device) if device is not None else default_device()
    return _Settings(frame_spec(fps, max_frames), resolved, torch_dtype(dtype, resolved), batch_size, skip_invalid,
                     decode_limits or DecodeLimits())


def _frame_reward(
    name: str, encoder: FrameEncoder, frame_score: FrameScore, settings: _Settings, *, uses_prompt: bool = True
) -> FrameWiseReward:
    return FrameWiseReward(
        name, encoder, frame_score, uses_prompt=uses_prompt, spec=settings.spec, batch_size=settings.batch_size,
        skip_invalid=settings.skip_invalid, decode_limits=settings.decode_limits,
    )


# ---- the registered scorers (options: docs/reward_zoo/clip_scorers.md) -----------------------------------


@register_reward("clip_score")
def clip_score(
    path: str | Path = "openai/clip-vit-base-patch32",
    *,
    formula: str = "clipscore",
    revision: str | None = None,
    fps: float = 2.0,
    max_frames: int = 32,
    batch_size: int = 4,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    skip_invalid: bool = False,
    decode_limits: DecodeLimits | Mapping[str, Any] | None = None,
) -> FrameWiseReward:
    """Prompt-frame agreement of a CLIP model: ``formula`` ``clipscore`` (2.5 * max(cos, 0)) or ``cosine``."""
    if formula not in CLIP_SCORE_FORMULAS:
        raise ConfigError(f"clip_score formula must be one of {sorted(CLIP_SCORE_FORMULAS)}, got {formula!r}")
    settings = _settings(fps=fps, max_frames=max_frames, batch_size=batch_size, device=device, dtype=dtype,
                         skip_invalid=skip_invalid, decode_limits=decode_limits)
    encoder = load_hf_clip(path, revision=revision, processor_path=None, device=settings.device, dtype=settings.dtype)
    return _frame_reward("clip_score", encoder, CLIP_SCORE_FORMULAS[formula], settings)


@register_reward("pickscore")
def pickscore(
    path: str | Path = "yuvalkirstain/PickScore_v1",
    *,
    processor_path: str | Path | None = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
    scale: float = 1.0,
    revision: str | None = None,
    fps: float = 2.0,
    max_frames: int = 32,
    batch_size: int = 4,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    skip_invalid: bool = False,
    decode_limits: DecodeLimits | Mapping[str, Any] | None = None,
) -> FrameWiseReward:
    """PickScore: ``scale`` * logit_scale.exp() * cos; ``processor_path: null`` takes the processor from ``path``."""
    if not (math.isfinite(scale) and scale > 0):
        raise ConfigError(f"pickscore scale must be a positive number (flow_grpo: 1/26), got {scale}")
    settings = _settings(fps=fps, max_frames=max_frames, batch_size=batch_size, device=device, dtype=dtype,
                         skip_invalid=skip_invalid, decode_limits=decode_limits)
    encoder = load_hf_clip(
        path, revision=revision, processor_path=processor_path, device=settings.device, dtype=settings.dtype
    )
    factor = scale * float(encoder.model.logit_scale.detach().exp())
    return _frame_reward("pickscore", encoder, functools.partial(scaled_cosine, factor=factor), settings)


@register_reward("hpsv2")
def hpsv2(
    path: str | Path = "xswu/HPSv2",
    *,
    weights_file: str = "HPS_v2.1_compressed.pt",
    architecture: str | Path = "ViT-H-14",
    revision: str | None = None,
    fps: float = 2.0,
    max_frames: int = 32,
    batch_size: int = 4,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    skip_invalid: bool = False,
    decode_limits: DecodeLimits | Mapping[str, Any] | None = None,
) -> FrameWiseReward:
    """HPSv2(.1): cos of an open_clip model. ``path``: the weights file, or a folder / hub id holding
    ``weights_file``; ``architecture``: an open_clip model name or a JSON config file."""
    settings = _settings(fps=fps, max_frames=max_frames, batch_size=batch_size, device=device, dtype=dtype,
                         skip_invalid=skip_invalid, decode_limits=decode_limits)
    weights = resolve_weights_file(path, weights_file, revision=revision, file_option="weights_file")
    encoder = load_open_clip(weights, architecture=architecture, device=settings.device, dtype=settings.dtype)
    return _frame_reward("hpsv2", encoder, cosine, settings)


@register_reward("aesthetic")
def aesthetic(
    path: str | Path = "openai/clip-vit-large-patch14",
    *,
    head: str | Path = "trl-lib/ddpo-aesthetic-predictor",
    head_file: str = "aesthetic-model.pth",
    revision: str | None = None,
    fps: float = 2.0,
    max_frames: int = 32,
    batch_size: int = 4,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    skip_invalid: bool = False,
    decode_limits: DecodeLimits | Mapping[str, Any] | None = None,
) -> FrameWiseReward:
    """LAION aesthetic score of each frame. ``path``: the CLIP backbone; ``head``: the MLP's weights file
    (``.pth`` or ``.safetensors``), or a folder / hub id holding ``head_file``."""
    settings = _settings(fps=fps, max_frames=max_frames, batch_size=batch_size, device=device, dtype=dtype,
                         skip_invalid=skip_invalid, decode_limits=decode_limits)
    encoder = load_hf_clip(path, revision=revision, processor_path=None, device=settings.device, dtype=settings.dtype)
    head_weights = resolve_weights_file(head, head_file, revision=None, file_option="head_file")
    mlp = load_aesthetic_head(head_weights, encoder.embed_dim).to(settings.device)
    scores = functools.partial(aesthetic_scores, head=mlp)
    return _frame_reward("aesthetic", encoder, scores, settings, uses_prompt=False)
