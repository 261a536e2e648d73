"""The video contract: one way from any video source to the frames a reward model sees.

Every path — training, HF and vLLM scoring, RL reward calls, evaluation — calls :func:`load_video`, so the
same clip gives the same frames, timestamps and token count everywhere. Sampling and resizing are those of
``qwen-vl-utils`` (the reference preprocessing of Qwen-VL and of the official DeScore code): its
``smart_nframes`` picks the frame count for the target fps, frames are taken at
``linspace(0, total - 1, n).round()``, and its ``smart_resize`` picks a size that is a multiple of the pixel
factor within the per-frame pixel budget, applied with antialiased bicubic resizing of uint8 frames.
Sources of another fps are resampled to ``VideoSpec.fps``, never mis-timed.

A file's container header is read first (:func:`probe_video`) and checked against :class:`DecodeLimits`;
only then are the sampled frames, and no others, decoded (:mod:`reward.decoding`).
"""

from __future__ import annotations

import math
from fractions import Fraction
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from qwen_vl_utils.vision_process import FRAME_FACTOR, VIDEO_MAX_TOKEN_NUM, smart_nframes, smart_resize
from torchvision.transforms import InterpolationMode
from torchvision.transforms.functional import resize
from transformers.video_utils import VideoMetadata

from .decoding import open_reader
from .errors import ConfigError, VideoDecodeError

# qwen-vl-utils caps a clip's total pixels at 0.9 x its model sequence length (128k tokens) x factor^2.
_DEFAULT_MAX_TOTAL_TOKENS = int(128_000 * 0.9)
_RGB_BYTES = 3


@dataclass(frozen=True)
class VideoSpec:
    """How a reward model samples and sizes video; saved in every reward checkpoint.

    Defaults are DeScore stage 1 on Qwen3-VL (``cold_start/train.sh`` of KlingAIResearch/DeScore;
    docs/descore.md, "Video preprocessing"): 2 fps, 4–768 frames, at most
    200,704 pixels per frame (448²), at least 128 merged tokens per frame, and a pixel factor of 32
    (16-px patches merged 2×2). Qwen2.5-VL uses a pixel factor of 28.
    """

    fps: float = 2.0
    min_frames: int = 4
    max_frames: int = 768
    min_pixels: int = 128 * 32 * 32
    max_pixels: int = 200_704
    pixel_factor: int = 32
    max_total_tokens: int = _DEFAULT_MAX_TOTAL_TOKENS

    def __post_init__(self) -> None:
        if not (self.fps > 0 and math.isfinite(self.fps)):
            raise ValueError(f"VideoSpec.fps must be a positive number, got {self.fps}")
        if not FRAME_FACTOR <= self.min_frames <= self.max_frames:
            raise ValueError(
                f"VideoSpec needs {FRAME_FACTOR} <= min_frames <= max_frames, got {self.min_frames} and {self.max_frames}"
            )
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ValueError(
                f"VideoSpec needs 0 < min_pixels <= max_pixels, got {self.min_pixels} and {self.max_pixels}"
            )
        if self.pixel_factor <= 0 or self.max_total_tokens <= 0:
            raise ValueError(f"VideoSpec.pixel_factor and max_total_tokens must be positive: {self}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> VideoSpec:
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown VideoSpec keys {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**values)

    def frame_pixel_budget(self, num_frames: int) -> int:
        """Largest pixel count per frame for a clip of ``num_frames`` sampled frames (qwen-vl-utils' rule)."""
        factor_area = self.pixel_factor**2
        budget = min(VIDEO_MAX_TOKEN_NUM * factor_area, self.max_total_tokens * factor_area / num_frames * FRAME_FACTOR)
        return int(min(self.max_pixels, max(budget, int(self.min_pixels * 1.05))))


@dataclass(frozen=True)
class DecodeLimits:
    """How much work one video file may cost; checked from its container metadata before any frame is decoded.

    The defaults admit every clip a user would plausibly score — up to 30 minutes, up to DCI 4K
    (4096x2160, so 3840x2160 UHD too) per frame, and up to 8 GiB of sampled frames at source resolution
    (the default spec's 768 frames of 1080p are 4.4 GiB) — and refuse, e.g., a 10-minute 8K file before it
    costs anything. Pass another instance to :func:`load_video` or :func:`probe_video` to raise or lower
    them. In-memory frames (:class:`VideoFrames`) are decoded already and are not checked.
    """

    max_duration_s: float = 1800.0
    max_pixels_per_frame: int = 4096 * 2160
    max_decoded_bytes: int = 8 * 2**30

    def __post_init__(self) -> None:
        for name in ("max_duration_s", "max_pixels_per_frame", "max_decoded_bytes"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"DecodeLimits.{name} must be a positive number, got {value}")


@dataclass
class DecodeLimitConfig:
    """The :class:`DecodeLimits` of a job, as config fields (and so CLI flags) of the jobs that read videos."""

    max_video_duration_s: float = field(
        default=DecodeLimits.max_duration_s, metadata={"help": "Longest video file accepted, in seconds."}
    )
    max_video_frame_pixels: int = field(
        default=DecodeLimits.max_pixels_per_frame, metadata={"help": "Largest frame accepted, in pixels (W x H)."}
    )
    max_video_decoded_bytes: int = field(
        default=DecodeLimits.max_decoded_bytes,
        metadata={"help": "Most bytes the sampled frames of one file may take at source resolution."},
    )

    def decode_limits(self) -> DecodeLimits:
        return DecodeLimits(self.max_video_duration_s, self.max_video_frame_pixels, self.max_video_decoded_bytes)


@dataclass(frozen=True)
class VideoInfo:
    """What a file's container says about its first video stream, read without decoding it.

    ``total_frames`` is the count the container states; where it states none (e.g. WebM, MKV) it is
    estimated as ``round(duration_s * fps)`` and ``frames_estimated`` is True; where it states no duration
    either (a streamed recording) the packets are counted. The decoder's own count (used to pick frames)
    can differ by a frame or so from an estimate.
    """

    total_frames: int
    fps: float
    duration_s: float
    width: int
    height: int
    codec: str
    frames_estimated: bool


@dataclass(frozen=True)
class VideoFrames:
    """Decoded frames in memory (e.g. a generator rollout) with the fps they were made at.

    ``frames`` is uint8 ``(T, H, W, 3)`` or float ``(T, 3, H, W)`` in [0, 1]; floats are quantised to uint8
    the way a video encoder would, so in-memory clips and files go through one identical resize.
    """

    frames: torch.Tensor | np.ndarray
    fps: float
    name: str = "<in-memory video>"


VideoSource = Union[str, Path, VideoFrames]


@dataclass(frozen=True)
class SampledVideo:
    """The frames a model sees (float32 ``(T, 3, H, W)`` in [0, 255]) and where they came from."""

    frames: torch.Tensor
    source: str
    source_fps: float
    total_frames: int
    frame_indices: list[int] = field(repr=False)

    @property
    def sample_fps(self) -> float:
        return len(self.frame_indices) / self.total_frames * self.source_fps

    @property
    def timestamps(self) -> list[float]:
        return [index / self.source_fps for index in self.frame_indices]

    def hf_metadata(self) -> VideoMetadata:
        """Metadata for the HF processors: Qwen3-VL derives timestamps, Qwen2.5-VL the sampled fps from it."""
        _, _, height, width = self.frames.shape
        return VideoMetadata(
            total_num_frames=self.total_frames,
            fps=self.source_fps,
            width=width,
            height=height,
            duration=self.total_frames / self.source_fps,
            frames_indices=list(self.frame_indices),
        )


def load_video(source: VideoSource, spec: VideoSpec, *, limits: DecodeLimits = DecodeLimits()) -> SampledVideo:
    """Decode (or take) a video, sample it at ``spec.fps`` and resize it as the model expects.

    A file is probed first (:func:`probe_video`) and checked against ``limits`` before anything is
    decoded; then only the sampled frames are decoded (decord's ``get_batch``, or PyAV seeking to the
    keyframe before each of them).

    Raises:
        VideoDecodeError: the file is missing, unreadable or corrupt, has no frames, exceeds ``limits``, or
            in-memory frames have the wrong shape, dtype or range. The message names the source and the reason.
    """
    if isinstance(source, VideoFrames):
        frames = frames_as_uint8(source)
        name, source_fps = source.name, float(source.fps)
        if not (source_fps > 0 and math.isfinite(source_fps)):
            raise VideoDecodeError(name, f"fps must be a positive number, got {source.fps}")
        indices = _sample_indices(name, len(frames), source_fps, spec)
        chosen = torch.from_numpy(np.ascontiguousarray(frames[indices])).permute(0, 3, 1, 2)
        total = len(frames)
    else:
        name = str(source)
        probe_video(name, limits=limits, spec=spec)
        reader = open_reader(name)
        total, source_fps = reader.total_frames, reader.fps
        indices = _sample_indices(name, total, source_fps, spec)
        chosen = reader.frames(indices)
    height, width = chosen.shape[-2:]
    try:
        size = smart_resize(
            height,
            width,
            factor=spec.pixel_factor,
            min_pixels=spec.min_pixels,
            max_pixels=spec.frame_pixel_budget(len(indices)),
        )
    except ValueError as error:
        raise VideoDecodeError(name, str(error)) from error
    resized = resize(chosen, list(size), interpolation=InterpolationMode.BICUBIC, antialias=True).float()
    return SampledVideo(
        frames=resized, source=name, source_fps=source_fps, total_frames=total, frame_indices=indices
    )


def probe_video(
    path: str | Path, *, limits: DecodeLimits = DecodeLimits(), spec: VideoSpec | None = None
) -> VideoInfo:
    """Read a file's container metadata, check it has at least two frames and is within ``limits``.

    Nothing is decoded and the packets are not read: the container header gives frame count, frame rate,
    duration, size and codec (FFmpeg's stream probing looks at the first few packets only, whatever the
    file's length). Only a file whose header states neither frame count nor duration has its packets
    counted. The header is read with PyAV for every file, also those decord decodes later, because
    decord can report neither size nor codec without decoding a frame. ``max_decoded_bytes`` is checked
    only when ``spec`` says how many frames will be sampled.

    Raises:
        VideoDecodeError: missing, unreadable (e.g. truncated: no moov atom), too few frames, or over a limit.
    """
    name = str(path)
    info = _read_info(name)
    if info.total_frames == 0:
        raise VideoDecodeError(name, "the video stream has no frames")
    _require_frames(name, info.total_frames)
    sampled = None if spec is None else _sample_count(info.total_frames, info.fps, spec)
    problems = _limit_problems(info, limits, sampled_frames=sampled)
    if problems:
        raise _limits_error(name, problems)
    return info


def _read_info(name: str) -> VideoInfo:
    import av

    if not Path(name).is_file():
        raise VideoDecodeError(name, "no such file")
    try:
        container = av.open(name)
    except Exception as error:  # av.FFmpegError subclasses, OSError, odd metadata encodings, ...
        raise VideoDecodeError(name, f"unreadable container: {getattr(error, 'strerror', None) or error}") from error
    with container:
        if not container.streams.video:
            raise VideoDecodeError(name, "the file has no video stream")
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        if not (fps > 0 and math.isfinite(fps)):
            raise VideoDecodeError(name, f"the container reports an invalid frame rate ({fps})")
        if stream.duration and stream.time_base:
            duration = float(stream.duration * stream.time_base)
        else:
            duration = (container.duration or 0) / av.time_base
        frames, estimated = max(stream.frames, 0), False
        if not frames and duration:
            frames, estimated = round(duration * fps), True
        elif not frames:
            # A streamed recording (e.g. a browser's MediaRecorder WebM) states neither count nor duration:
            # count its packets, which reads the file but decodes nothing.
            frames = sum(1 for packet in container.demux(stream) if packet.size)
        context = stream.codec_context
        return VideoInfo(
            total_frames=frames,
            fps=fps,
            duration_s=duration or frames / fps,
            width=context.width,
            height=context.height,
            codec=context.codec.canonical_name,
            frames_estimated=estimated,
        )


def _limit_problems(
    info: VideoInfo, limits: DecodeLimits, *, sampled_frames: int | None
) -> dict[str, tuple[int | float, str]]:
    """Each limit the file exceeds: field name -> (the value that would admit it, what was measured)."""
    problems: dict[str, tuple[int | float, str]] = {}
    if info.duration_s > limits.max_duration_s:
        problems["max_duration_s"] = (
            math.ceil(info.duration_s),
            f"its duration {info.duration_s:.1f} s exceeds DecodeLimits.max_duration_s = {limits.max_duration_s:g} s",
        )
    pixels = info.width * info.height
    if pixels > limits.max_pixels_per_frame:
        problems["max_pixels_per_frame"] = (
            pixels,
            f"its frame size {info.width}x{info.height} = {pixels:,} px exceeds "
            f"DecodeLimits.max_pixels_per_frame = {limits.max_pixels_per_frame:,} px",
        )
    decoded = (sampled_frames or 0) * pixels * _RGB_BYTES
    if decoded > limits.max_decoded_bytes:
        problems["max_decoded_bytes"] = (
            decoded,
            f"its {sampled_frames} sampled frames decode to {decoded:,} bytes ({decoded / 2**30:.2f} GiB), above "
            f"DecodeLimits.max_decoded_bytes = {limits.max_decoded_bytes:,} bytes (or sample fewer frames: "
            "VideoSpec.fps, max_frames)",
        )
    return problems


# The job-config field (CLI flag) of each DecodeLimits field.
_LIMIT_FLAGS = {
    "max_duration_s": "max_video_duration_s",
    "max_pixels_per_frame": "max_video_frame_pixels",
    "max_decoded_bytes": "max_video_decoded_bytes",
}


def _limits_error(name: str, problems: dict[str, tuple[int | float, str]]) -> VideoDecodeError:
    needed = ", ".join(f"{field}={value}" for field, (value, _) in problems.items())
    reasons = "; ".join(reason for _, reason in problems.values())
    flags = " ".join(f"--{_LIMIT_FLAGS[field]} {value}" for field, (value, _) in problems.items())
    advice = f"to admit it, pass {flags} (command line) or limits=reward.video.DecodeLimits({needed}) (Python)"
    return VideoDecodeError(name, f"{reasons}; {advice}")


def _require_frames(name: str, total_frames: int) -> None:
    if total_frames < FRAME_FACTOR:
        raise VideoDecodeError(name, f"it has {total_frames} frame(s); at least {FRAME_FACTOR} are needed")


def _sample_count(total_frames: int, source_fps: float, spec: VideoSpec) -> int:
    request = {"fps": spec.fps, "min_frames": spec.min_frames, "max_frames": min(spec.max_frames, total_frames)}
    return smart_nframes(request, total_frames=total_frames, video_fps=source_fps)


def _sample_indices(name: str, total_frames: int, source_fps: float, spec: VideoSpec) -> list[int]:
    _require_frames(name, total_frames)
    count = _sample_count(total_frames, source_fps, spec)
    return torch.linspace(0, total_frames - 1, count).round().long().tolist()


def frames_as_uint8(video: VideoFrames) -> np.ndarray:
    """Validate in-memory frames and return them as uint8 ``(T, H, W, 3)`` (floats quantised as a video encoder
    would): what :func:`load_video` samples from, and what the ``remote`` reward sends to a reward server."""
    frames = video.frames
    array = frames.detach().cpu() if isinstance(frames, torch.Tensor) else torch.as_tensor(np.ascontiguousarray(frames))
    if array.ndim != 4:
        raise VideoDecodeError(video.name, f"frames must be 4-D (T, H, W, 3) uint8 or (T, 3, H, W) float, got shape {tuple(array.shape)}")
    if array.dtype == torch.uint8:
        if array.shape[-1] != 3:
            raise VideoDecodeError(video.name, f"uint8 frames must be (T, H, W, 3), got shape {tuple(array.shape)}")
        return array.numpy()
    if not array.is_floating_point():
        raise VideoDecodeError(video.name, f"frames must be uint8 or floating point, got {array.dtype}")
    if array.shape[1] != 3:
        raise VideoDecodeError(video.name, f"float frames must be (T, 3, H, W), got shape {tuple(array.shape)}")
    array = array.float()
    if not torch.isfinite(array).all():
        raise VideoDecodeError(video.name, "float frames contain NaN or infinity")
    low, high = array.min().item(), array.max().item()
    if low < 0.0 or high > 1.0:
        raise VideoDecodeError(video.name, f"float frames must lie in [0, 1], got [{low:.4g}, {high:.4g}]")
    return (array * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def write_video(
    path: str | Path,
    frames: np.ndarray,
    fps: float,
    *,
    codec: str = "libx264",
    audio: bool = False,
    lossless: bool = False,
    keyframe_interval: int | None = None,
) -> Path:
    """Encode uint8 ``(T, H, W, 3)`` frames with PyAV (any codec PyAV ships: h264, hevc, vp9, av1, mpeg4),
    optionally with an audio track (a quiet 440 Hz tone, AAC or Opus for webm).

    ``lossless`` (x264/x265 at qp 0) makes the decoded frames a function of the input alone: the bundled
    libx264 occasionally emits a different lossy bitstream for the same frames between runs, which made
    synthetic datasets — and everything trained on them — differ. Known clash: decord 0.6 bundles its own libvpx, so after ``import decord`` the libvpx (vp8/vp9) *encoders*
    fail in the same process; decoding is unaffected. ``keyframe_interval`` sets the encoder's GOP length
    (its default otherwise), e.g. to give a short clip many seek points.
    """
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        if lossless:
            stream.options = {"qp": "0"}
        if keyframe_interval is not None:
            stream.codec_context.gop_size = keyframe_interval
        audio_stream = None
        if audio:
            audio_codec = "libopus" if path.suffix == ".webm" else "aac"
            audio_stream = container.add_stream(audio_codec, rate=48000 if audio_codec == "libopus" else 44100)
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")))
        container.mux(stream.encode())
        if audio_stream is not None:
            _write_tone(container, audio_stream, seconds=len(frames) / fps)
    return path


def _write_tone(container: Any, stream: Any, seconds: float) -> None:
    import av

    rate = stream.rate
    samples = int(rate * seconds)
    tone = (0.1 * np.sin(2 * np.pi * 440 * np.arange(samples) / rate)).astype(np.float32)
    chunk = stream.codec_context.frame_size or 1024
    for start in range(0, samples, chunk):
        piece = tone[start : start + chunk]
        frame = av.AudioFrame.from_ndarray(piece[None, :], format="flt", layout="mono")
        frame.rate = rate
        container.mux(stream.encode(frame))
    container.mux(stream.encode())
