"""Decoders that turn a video file into the frames at given indices: decord, or PyAV where decord fails.

Both decode only what the sampled frames need. decord indexes the packets when it opens a file and its
``get_batch`` seeks to each requested frame; the PyAV path indexes the packets itself and decodes from
the keyframe before each requested frame, returning the same frames as decoding the whole stream and
indexing it. decord 0.6 does not quite: after a seek in x265's open-GOP HEVC, in h264 in MPEG-TS, or
in AVI and MPEG-PS files with B-frames, some of its frames differ from its own sequential decode. It
stays the first choice because qwen-vl-utils (the reference preprocessing) reads with it, so common
files give the reference's frames. Which frames to take, and every check before decoding, live in
:mod:`reward.video`.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np
import torch

from .errors import VideoDecodeError


class FrameReader:
    """An opened video file: frame count, average fps and random access to uint8 ``(T, 3, H, W)`` frames."""

    def __init__(self, name: str, total_frames: int, fps: float, read: Callable[[list[int]], np.ndarray]) -> None:
        self.name, self.total_frames, self.fps, self._read = name, total_frames, fps, read

    def frames(self, indices: list[int]) -> torch.Tensor:
        try:
            array = self._read(indices)
        except Exception as error:  # decoder errors have no common type; re-raised with the file named
            raise VideoDecodeError(self.name, f"decoding failed: {error}") from error
        return torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2)


def open_reader(name: str) -> FrameReader:
    """Open a decoder for a file that :func:`reward.video.probe_video` accepted: decord, or PyAV where decord fails."""
    reasons = []
    for opener in (open_decord, open_pyav):
        try:
            reader = opener(name)
        except ImportError as error:
            reasons.append(str(error))
            continue
        except Exception as error:  # each backend raises its own types (RuntimeError, av.FFmpegError, ...)
            reasons.append(f"{opener.__name__.removeprefix('open_')}: {error}".strip())
            continue
        if reader.total_frames == 0:
            raise VideoDecodeError(name, "the video stream has no frames")
        if not (reader.fps > 0 and math.isfinite(reader.fps)):
            raise VideoDecodeError(name, f"the container reports an invalid frame rate ({reader.fps})")
        return reader
    raise VideoDecodeError(name, "; ".join(reasons))


def open_decord(name: str) -> FrameReader:
    """decord indexes the packets on open (no decoding) and ``get_batch`` seeks to each requested frame."""
    try:
        import decord
    except ImportError as error:
        raise ImportError("decord is not installed") from error
    video = decord.VideoReader(name, num_threads=1)
    return FrameReader(name, len(video), float(video.get_avg_fps()), lambda indices: video.get_batch(indices).asnumpy())


@dataclass(frozen=True)
class _FrameIndex:
    """Where each frame of a stream sits, from its packets (demuxed, not decoded).

    Frame ``i`` is the packet with the ``i``-th smallest presentation timestamp, which is the order the
    decoder returns frames in. ``keyframes`` holds (frame index, timestamp to seek to) per keyframe; it is
    empty, and ``order`` None, when some packet has no timestamp or two share one, so frames can only be
    counted from the start.
    """

    total_frames: int
    order: dict[int, int] | None
    keyframes: list[tuple[int, int]]

    def keyframe_before(self, index: int) -> tuple[int, int] | None:
        """The last keyframe at or before frame ``index`` (None: decode from the start)."""
        position = bisect.bisect_right(self.keyframes, (index, math.inf)) - 1
        return self.keyframes[position] if position >= 0 else None


def _index_frames(container: Any, stream: Any) -> _FrameIndex:
    stamps, keys = [], []
    for packet in container.demux(stream):
        if packet.size == 0:  # the empty packet that flushes the decoder at the end
            continue
        stamps.append(packet.pts)
        if packet.is_keyframe:
            # mp4 seeks by decode time, which is at or before the presentation time; either lands on this
            # keyframe or an earlier one, never a later one.
            keys.append((packet.pts, packet.pts if packet.dts is None else min(packet.dts, packet.pts)))
    if None in stamps or len(set(stamps)) != len(stamps):
        return _FrameIndex(total_frames=len(stamps), order=None, keyframes=[])
    order = {pts: index for index, pts in enumerate(sorted(stamps))}
    return _FrameIndex(
        total_frames=len(stamps), order=order, keyframes=sorted((order[pts], seek) for pts, seek in keys)
    )


def open_pyav(name: str) -> FrameReader:
    """PyAV fallback: index the packets once, then decode only from the keyframe before each sampled frame."""
    import av

    with av.open(name) as container:
        if not container.streams.video:
            raise ValueError("the file has no video stream")
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        index = _index_frames(container, stream)
    return FrameReader(name, index.total_frames, fps, lambda indices: _decode_pyav(name, index, indices))


class _OrderMismatch(Exception):
    """The container's timestamps do not give the order the decoder returns frames in."""


def _decode_pyav(name: str, index: _FrameIndex, indices: list[int]) -> np.ndarray:
    """The frames at ``indices`` as uint8 ``(T, H, W, 3)``, identical to decoding the whole stream.

    Where the packet timestamps turn out not to give the decoder's output order (h264 with B-frames in
    AVI, some MPEG program streams), the frames are counted while decoding from the start instead, as a
    full decode would; the check is that, between seeks, every decoded frame is the one after the last.
    """
    if index.order is not None:
        try:
            return _decode_frames(name, index, indices)
        except _OrderMismatch:
            pass
    return _decode_frames(name, replace(index, order=None, keyframes=[]), indices)


def _decode_frames(name: str, index: _FrameIndex, indices: list[int]) -> np.ndarray:
    """Visit the targets in order, seeking only when the next one's keyframe lies beyond the next frame
    to be decoded: a short clip is decoded once from its start, a long one costs about one group of
    pictures per sampled frame."""
    import av

    found: dict[int, np.ndarray] = {}
    with av.open(name) as container:
        stream = container.streams.video[0]
        frames, position = container.decode(stream), -1
        for target in sorted(set(indices)):
            keyframe = index.keyframe_before(target)
            if keyframe is not None and keyframe[0] > position + 1:
                container.seek(keyframe[1], stream=stream, backward=True)
                frames, position = container.decode(stream), None
            while position is None or position < target:
                frame = next(frames, None)
                if frame is None:
                    raise ValueError(f"the stream ended before frame {target} of {index.total_frames}")
                position = _frame_position(index, frame.pts, after=position)
            if position != target:
                raise _OrderMismatch(f"decoding went from before frame {target} to frame {position}")
            found[target] = frame.to_ndarray(format="rgb24")
    return np.stack([found[target] for target in indices])


def _frame_position(index: _FrameIndex, pts: int | None, *, after: int | None) -> int:
    """Index of a decoded frame; ``after`` is the previous frame's (None right after a seek: any)."""
    if index.order is None:
        return after + 1
    position = index.order.get(pts)
    if position is None or (after is not None and position != after + 1):
        raise _OrderMismatch(f"a frame at timestamp {pts} followed frame {after}")
    return position
