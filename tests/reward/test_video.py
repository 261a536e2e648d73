"""Tests for reward/video.py: the one path from a video source to the frames a reward model sees.

Expected frame counts, indices and sizes are worked out by hand from the qwen-vl-utils rules that
``load_video`` reproduces:

* frame count ``n = total / fps_src * spec.fps``, clamped to ``[min_frames, min(max_frames, total)]`` and
  then floored to an even number; frames are taken at ``linspace(0, total - 1, n).round()``;
* size: ``smart_resize`` rounds H and W to multiples of 32; if the area is below ``min_pixels`` both sides
  are scaled by ``beta = sqrt(min_pixels / (H * W))`` and rounded *up* to multiples of 32, if above
  ``max_pixels`` by ``beta = sqrt(H * W / max_pixels)`` and rounded *down*.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.functional import resize

from reward.decoding import open_pyav
from reward.errors import ConfigError, VideoDecodeError
from reward.video import (
    DecodeLimits,
    VideoFrames,
    VideoInfo,
    VideoSpec,
    _limit_problems,
    load_video,
    probe_video,
    write_video,
)

from ..conftest import REPO_ROOT, TINY_SPEC
from .helpers import count_decoding, gradient_clip

DEFAULT_SPEC = VideoSpec()


def grey_ramp_levels(frames: int) -> np.ndarray:
    """Grey level of frame t: 40 + round(160 t / (T - 1)), i.e. 40 at the first frame, 200 at the last."""
    return 40 + np.round(160 * np.arange(frames) / (frames - 1)).astype(np.int64)


def grey_ramp_clip(frames: int, height: int, width: int) -> np.ndarray:
    levels = grey_ramp_levels(frames).astype(np.uint8)
    return np.ascontiguousarray(np.broadcast_to(levels[:, None, None, None], (frames, height, width, 3)))


def decord_frames(path: Path) -> tuple[np.ndarray, float]:
    """All frames of a file as decord returns them (what ``load_video`` uses), and the container fps."""
    import decord

    reader = decord.VideoReader(str(path), num_threads=1)
    return reader.get_batch(list(range(len(reader)))).asnumpy(), float(reader.get_avg_fps())


def reference_fetch(path: Path, spec: VideoSpec):
    """qwen-vl-utils' own preprocessing of a file, with the decord backend asserted."""
    from qwen_vl_utils import fetch_video

    (frames, metadata), sample_fps = fetch_video(
        {
            "video": str(path),
            "fps": spec.fps,
            "min_pixels": spec.min_pixels,
            "max_pixels": spec.max_pixels,
            "min_frames": spec.min_frames,
            "max_frames": spec.max_frames,
        },
        image_patch_size=spec.pixel_factor // 2,
        return_video_sample_fps=True,
        return_video_metadata=True,
    )
    assert metadata["video_backend"] == "decord", (
        "qwen-vl-utils did not read with decord (torchcodec installed, FORCE_QWENVL_VIDEO_READER set, or a "
        f"silent fallback): {metadata['video_backend']}"
    )
    return frames, metadata, sample_fps


# --------------------------------------------------------------------------------------------------------
# Parity with the reference preprocessing (qwen_vl_utils.fetch_video, decord backend)
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def parity_videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("parity")
    specs = {
        # name: (frames, height, width, fps)
        "qcif_25fps_3s": (75, 144, 176, 25.0),
        "qvga_29.97fps_2s": (60, 240, 320, 30000 / 1001),
        "360p_24fps_2s": (48, 360, 640, 24.0),
        "10fps_10s": (100, 48, 64, 10.0),
        "5_frames_25fps": (5, 48, 64, 25.0),
        "3_frames_25fps": (3, 48, 64, 25.0),
    }
    return {
        name: write_video(root / f"{name}.mp4", gradient_clip(t, h, w), fps)
        for name, (t, h, w, fps) in specs.items()
    }


QVGA_SAMPLE_FPS = 4 / 60 * 30000 / 1001  # 4 of 60 frames at 29.97 fps
PARITY_CASES = [
    # (video, spec, expected frame indices, expected (H, W), expected sample fps)
    pytest.param("qcif_25fps_3s", DEFAULT_SPEC, [0, 15, 30, 44, 59, 74], (352, 416), 2.0, id="176x144-default"),
    pytest.param("qcif_25fps_3s", TINY_SPEC, [0, 15, 30, 44, 59, 74], (32, 64), 2.0, id="176x144-tiny"),
    pytest.param("qvga_29.97fps_2s", DEFAULT_SPEC, [0, 20, 39, 59], (320, 448), QVGA_SAMPLE_FPS, id="320x240-default"),
    pytest.param("qvga_29.97fps_2s", TINY_SPEC, [0, 20, 39, 59], (32, 64), QVGA_SAMPLE_FPS, id="320x240-tiny"),
    pytest.param("360p_24fps_2s", DEFAULT_SPEC, [0, 16, 31, 47], (320, 576), 2.0, id="640x360-default"),
    pytest.param("360p_24fps_2s", TINY_SPEC, [0, 16, 31, 47], (32, 64), 2.0, id="640x360-tiny"),
    pytest.param("10fps_10s", TINY_SPEC, [0, 14, 28, 42, 57, 71, 85, 99], (64, 64), 0.8, id="max_frames-caps"),
    pytest.param("5_frames_25fps", DEFAULT_SPEC, [0, 1, 3, 4], (320, 448), 20.0, id="shorter-than-min_frames"),
    pytest.param("3_frames_25fps", DEFAULT_SPEC, [0, 2], (320, 448), 2 / 3 * 25, id="fewer-frames-than-min_frames"),
]


@pytest.mark.parametrize(("video", "spec", "indices", "size", "sample_fps"), PARITY_CASES)
def test_load_video_matches_qwen_vl_utils(parity_videos, video, spec, indices, size, sample_fps):
    """Frames are bit-identical to qwen-vl-utils' ``fetch_video`` (decord backend), with the same indices.

    Hand derivation of the expectations (see the module docstring for the rules):

    * 176x144, 25 fps, 75 frames: n = 75 / 25 * 2 = 6 -> linspace(0, 74, 6) = 0, 14.8, 29.6, 44.4, 59.2, 74
      -> [0, 15, 30, 44, 59, 74]; sample fps 6 / 75 * 25 = 2. Default spec (min 131072 px): 144x176 ->
      128x192 = 24576 px < min, beta = sqrt(131072 / 25344) = 2.2741 -> ceil(10.23) * 32 = 352,
      ceil(12.51) * 32 = 416. Tiny spec (max 4096 px): beta = sqrt(25344 / 4096) = 2.4875 ->
      floor(1.81) * 32 = 32, floor(2.21) * 32 = 64.
    * 320x240, 30000/1001 fps, 60 frames: n = 60 / 29.97 * 2 = 4.004 -> 4 -> linspace(0, 59, 4) =
      0, 19.67, 39.33, 59 -> [0, 20, 39, 59]; sample fps 4 / 60 * 29.97. Default: 256x320 = 81920 < min,
      beta = sqrt(131072 / 76800) = 1.3064 -> ceil(9.80) * 32 = 320, ceil(13.06) * 32 = 448. Tiny: 32x64.
    * 640x360, 24 fps, 48 frames: n = 4 -> [0, 16, 31, 47]. Default: 352x640 = 225280 > 200704,
      beta = sqrt(230400 / 200704) = 1.0714 -> floor(10.5) * 32 = 320, floor(18.67) * 32 = 576. Tiny: 32x64.
    * 64x48, 10 fps, 100 frames, tiny spec: n = 20 capped at max_frames 8 -> linspace(0, 99, 8) in steps
      of 14.143 -> [0, 14, 28, 42, 57, 71, 85, 99]; sample fps 8 / 100 * 10 = 0.8; 48x64 -> 64x64 = 4096
      = max (kept).
    * 5 frames at 25 fps: n = 0.4 raised to min_frames 4 -> linspace(0, 4, 4) -> [0, 1, 3, 4]; 4 / 5 * 25 = 20.
    * 3 frames: min_frames 4 clipped to the 3 frames, floored to even 2 -> [0, 2]; 2 / 3 * 25.
      64x48 at the default spec: beta = sqrt(131072 / 3072) = 6.532 -> ceil(9.80) * 32 = 320,
      ceil(13.06) * 32 = 448.
    """
    path = parity_videos[video]
    ours = load_video(path, spec)
    reference, metadata, reference_fps = reference_fetch(path, spec)

    assert ours.frames.dtype == torch.float32
    assert tuple(ours.frames.shape) == (len(indices), 3, *size)
    assert torch.equal(ours.frames, reference)
    assert ours.frame_indices == indices == list(metadata["frames_indices"])
    assert ours.total_frames == metadata["total_num_frames"]
    assert ours.source_fps == metadata["fps"]
    assert ours.sample_fps == reference_fps
    assert ours.sample_fps == pytest.approx(sample_fps, rel=1e-12)
    assert ours.source == str(path)


# --------------------------------------------------------------------------------------------------------
# File and in-memory sources give the same model input
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def qcif_file(parity_videos) -> Path:
    return parity_videos["qcif_25fps_3s"]


def _memory_sources(path: Path) -> dict[str, VideoFrames]:
    frames, fps = decord_frames(path)
    as_float = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    return {
        "uint8 THWC numpy": VideoFrames(frames, fps=fps),
        "uint8 THWC tensor": VideoFrames(torch.from_numpy(frames), fps=fps),
        "float32 TCHW tensor": VideoFrames(as_float, fps=fps),
        "float64 TCHW numpy": VideoFrames(frames.transpose(0, 3, 1, 2).astype(np.float64) / 255, fps=fps),
    }


@pytest.mark.parametrize("spec", [DEFAULT_SPEC, TINY_SPEC], ids=["default", "tiny"])
def test_file_and_memory_frames_load_identically(qcif_file, spec):
    """Decoding the file ourselves and passing the frames in memory gives exactly the file's model input.

    The 75-frame 25 fps clip samples [0, 15, 30, 44, 59, 74] either way (sample fps 2.0, timestamps
    index / 25 = [0.0, 0.6, 1.2, 1.76, 2.36, 2.96] s). Float frames x / 255 quantise back to x exactly.
    """
    from_file = load_video(qcif_file, spec)
    assert from_file.frame_indices == [0, 15, 30, 44, 59, 74]
    assert from_file.timestamps == pytest.approx([0.0, 0.6, 1.2, 1.76, 2.36, 2.96], rel=1e-12)
    for kind, source in _memory_sources(qcif_file).items():
        from_memory = load_video(source, spec)
        assert torch.equal(from_memory.frames, from_file.frames), kind
        assert from_memory.frame_indices == from_file.frame_indices, kind
        assert from_memory.total_frames == from_file.total_frames == 75, kind
        assert from_memory.source_fps == from_file.source_fps == 25.0, kind
        assert from_memory.sample_fps == from_file.sample_fps == 2.0, kind
        assert from_memory.timestamps == from_file.timestamps, kind
        assert from_memory.source == "<in-memory video>", kind


def test_file_and_memory_frames_give_identical_processor_inputs(qcif_file, tiny_qwen3_vl_dir):
    """Through the real (tiny) Qwen3-VL processor both sources give the same tokens and pixel values.

    Tiny spec on the 176x144 clip: 6 frames of 32x64 px -> grid (T, H, W) = (6 / 2, 32 / 16, 64 / 16)
    = (3, 2, 4) patches, 3 * 2 * 4 / (2 * 2 merge) = 6 <|video_pad|> tokens in the text.
    """
    from transformers import AutoProcessor

    from reward.inputs import encode, generation_text
    from reward.prompts import judge_text

    processor = AutoProcessor.from_pretrained(tiny_qwen3_vl_dir)
    text = generation_text(processor, judge_text("a prompt"))
    video_pad = processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")

    from_file = encode(processor, [text], [load_video(qcif_file, TINY_SPEC)])
    assert from_file["video_grid_thw"].tolist() == [[3, 2, 4]]
    assert int((from_file["input_ids"] == video_pad).sum()) == 6
    assert tuple(from_file["pixel_values_videos"].shape)[0] == 3 * 2 * 4
    for kind, source in _memory_sources(qcif_file).items():
        from_memory = encode(processor, [text], [load_video(source, TINY_SPEC)])
        assert torch.equal(from_memory["input_ids"], from_file["input_ids"]), kind
        assert torch.equal(from_memory["attention_mask"], from_file["attention_mask"]), kind
        assert torch.equal(from_memory["pixel_values_videos"], from_file["pixel_values_videos"]), kind
        assert torch.equal(from_memory["video_grid_thw"], from_file["video_grid_thw"]), kind


def test_float_frames_are_rounded_to_the_nearest_uint8_level():
    """Floats are quantised to the nearest of the 256 levels: (k + 0.6) / 255 -> k + 1 and
    (k + 0.4) / 255 -> k, so they load exactly like those uint8 frames (truncation would give k both times)."""
    levels = gradient_clip(8, 48, 64).astype(np.int64).clip(0, 253)
    up = torch.from_numpy((levels + 0.6) / 255).permute(0, 3, 1, 2).float()
    down = torch.from_numpy((levels + 0.4) / 255).permute(0, 3, 1, 2).float()
    expected_up = load_video(VideoFrames((levels + 1).astype(np.uint8), fps=8.0), TINY_SPEC)
    expected_down = load_video(VideoFrames(levels.astype(np.uint8), fps=8.0), TINY_SPEC)
    assert torch.equal(load_video(VideoFrames(up, fps=8.0), TINY_SPEC).frames, expected_up.frames)
    assert torch.equal(load_video(VideoFrames(down, fps=8.0), TINY_SPEC).frames, expected_down.frames)


def test_memory_frames_accept_a_reversed_channel_view():
    """An RGB view made by reversing BGR channels loads like the same frames copied into fresh memory."""
    bgr = gradient_clip(8, 48, 64)
    rgb_view = bgr[..., ::-1]
    expected = load_video(VideoFrames(rgb_view.copy(), fps=8.0), TINY_SPEC)
    got = load_video(VideoFrames(rgb_view, fps=8.0), TINY_SPEC)
    assert torch.equal(got.frames, expected.frames)


# --------------------------------------------------------------------------------------------------------
# Resampling to spec.fps
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source_fps", "total", "indices", "timestamps", "sample_fps"),
    [
        # 32 / 16 * 2 = 4 -> linspace(0, 31, 4) = 0, 10.33, 20.67, 31; timestamps index / 16.
        (16.0, 32, [0, 10, 21, 31], [0.0, 0.625, 1.3125, 1.9375], 2.0),
        # 24 / 12 * 2 = 4 -> linspace(0, 23, 4) = 0, 7.67, 15.33, 23; timestamps index / 12.
        (12.0, 24, [0, 8, 15, 23], [0.0, 8 / 12, 15 / 12, 23 / 12], 2.0),
        # 120 / 60 * 2 = 4 -> linspace(0, 119, 4) = 0, 39.67, 79.33, 119; timestamps index / 60.
        (60.0, 120, [0, 40, 79, 119], [0.0, 40 / 60, 79 / 60, 119 / 60], 2.0),
        # A 1 fps source is slower than the target: 8 / 1 * 2 = 16 capped at the 8 frames -> all of them,
        # still at their true times 0..7 s; sample fps 8 / 8 * 1 = 1 (not 2: never mis-timed).
        (1.0, 8, list(range(8)), [float(i) for i in range(8)], 1.0),
    ],
)
def test_resampling_to_spec_fps(source_fps, total, indices, timestamps, sample_fps):
    """Frame t of the clip is a flat grey of level 2 t, so the picked frames show up in the pixels."""
    levels = (2 * np.arange(total)).astype(np.uint8)
    clip = np.ascontiguousarray(np.broadcast_to(levels[:, None, None, None], (total, 48, 64, 3)))
    sampled = load_video(VideoFrames(clip, fps=source_fps), TINY_SPEC)

    assert sampled.frame_indices == indices
    assert sampled.timestamps == pytest.approx(timestamps, abs=1e-12)
    assert sampled.sample_fps == pytest.approx(sample_fps, rel=1e-12)
    assert sampled.total_frames == total
    expected_levels = torch.tensor([2.0 * i for i in indices])
    assert torch.equal(sampled.frames.amin(dim=(1, 2, 3)), expected_levels)
    assert torch.equal(sampled.frames.amax(dim=(1, 2, 3)), expected_levels)


def test_hf_metadata_carries_source_timing(qcif_file):
    """The processor metadata is the source's: 75 frames at 25 fps = 3 s, indices as sampled, 32x64 px."""
    metadata = load_video(qcif_file, TINY_SPEC).hf_metadata()
    assert metadata.total_num_frames == 75
    assert metadata.fps == 25.0
    assert metadata.duration == 3.0
    assert list(metadata.frames_indices) == [0, 15, 30, 44, 59, 74]
    assert (metadata.height, metadata.width) == (32, 64)


# --------------------------------------------------------------------------------------------------------
# Real-world variety: codecs, containers, odd sizes, audio, lengths, frame rates
# --------------------------------------------------------------------------------------------------------

# name: (file, codec, frames, height, width, fps, audio)
VARIETY = {
    "h264": ("h264.mp4", "libx264", 20, 48, 64, 25.0, False),
    "hevc": ("hevc.mp4", "hevc", 20, 48, 64, 25.0, False),
    "vp9-webm": ("vp9.webm", "libvpx-vp9", 20, 48, 64, 25.0, False),
    "vp9-webm-opus": ("vp9_opus.webm", "libvpx-vp9", 20, 48, 64, 25.0, True),
    "av1": ("av1.mp4", "libsvtav1", 20, 48, 64, 25.0, False),
    "mpeg4": ("mpeg4.mp4", "mpeg4", 20, 48, 64, 25.0, False),
    "odd-130x98": ("odd_130x98.mp4", "libx264", 20, 98, 130, 25.0, False),
    "square-64x64": ("square.mp4", "libx264", 20, 64, 64, 25.0, False),
    "aac-audio": ("aac.mp4", "libx264", 20, 48, 64, 25.0, True),
    "10s": ("ten_seconds.mp4", "libx264", 250, 48, 64, 25.0, False),
    "12fps": ("fps12.mp4", "libx264", 24, 48, 64, 12.0, False),
    "60fps": ("fps60.mp4", "libx264", 120, 48, 64, 60.0, False),
}

_WRITER = """
import json, sys
import numpy as np
from reward.video import write_video
for path, codec, frames, height, width, fps, audio in json.loads(sys.argv[1]):
    levels = (40 + np.round(160 * np.arange(frames) / (frames - 1))).astype(np.uint8)
    clip = np.ascontiguousarray(np.broadcast_to(levels[:, None, None, None], (frames, height, width, 3)))
    write_video(path, clip, fps, codec=codec, audio=audio)
"""


@pytest.fixture(scope="module")
def variety_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All variety clips (grey ramps, see ``grey_ramp_clip``), written in a fresh Python process.

    Why a subprocess: the decord 0.6 wheel bundles its own libvpx, and once decord is imported its symbols
    shadow PyAV's, so PyAV's libvpx-vp9 encoder fails to open (avcodec_open2 returns EINVAL) for the rest
    of the process. Other test files import decord before this fixture runs.
    """
    root = tmp_path_factory.mktemp("variety")
    jobs = [[str(root / name), codec, t, h, w, fps, audio] for name, codec, t, h, w, fps, audio in VARIETY.values()]
    done = subprocess.run(
        [sys.executable, "-c", _WRITER, json.dumps(jobs)], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return root


# Expected sampled indices (n from the module docstring rule) and frame size at the default spec.
VARIETY_EXPECTED = {
    # 20 frames at 25 fps: n = 1.6 -> min_frames 4 -> linspace(0, 19, 4) = 0, 6.33, 12.67, 19.
    "20@25": [0, 6, 13, 19],
    # 250 frames at 25 fps (10 s): n = 20 -> linspace(0, 249, 20), steps of 249 / 19.
    "250@25": [round(k * 249 / 19) for k in range(20)],
    # 24 frames at 12 fps: n = 4 -> linspace(0, 23, 4) = 0, 7.67, 15.33, 23.
    "24@12": [0, 8, 15, 23],
    # 120 frames at 60 fps: n = 4 -> linspace(0, 119, 4) = 0, 39.67, 79.33, 119.
    "120@60": [0, 40, 79, 119],
}
# 48x64, 98x130 -> 320x448 (see the parity test); 64x64 -> beta = sqrt(131072 / 4096) = 5.657 ->
# ceil(11.31) * 32 = 384 on both sides.
VARIETY_SIZE = {(48, 64): (320, 448), (98, 130): (320, 448), (64, 64): (384, 384)}


@pytest.mark.parametrize("name", list(VARIETY))
def test_real_world_videos_load(variety_dir, name):
    """Every codec / container / size / fps loads at the expected indices, size and grey levels.

    Frame t of a T-frame clip is grey 40 + round(160 t / (T - 1)); lossy coding moves a flat grey by at
    most a couple of levels, so each sampled frame's mean must be within 3 of its source frame's level.
    """
    file_name, _, total, height, width, fps, _ = VARIETY[name]
    sampled = load_video(variety_dir / file_name, DEFAULT_SPEC)
    indices = VARIETY_EXPECTED[f"{total}@{fps:g}"]
    frames, channels, out_height, out_width = sampled.frames.shape

    assert channels == 3
    assert frames == len(indices) and frames % 2 == 0
    assert out_height % 32 == 0 and out_width % 32 == 0
    assert (out_height, out_width) == VARIETY_SIZE[(height, width)]
    assert DEFAULT_SPEC.min_pixels <= out_height * out_width <= DEFAULT_SPEC.frame_pixel_budget(frames)
    assert sampled.frame_indices == indices
    assert sampled.total_frames == total
    assert sampled.source_fps == pytest.approx(fps, rel=1e-9)
    means = sampled.frames.mean(dim=(1, 2, 3)).double()
    expected = torch.tensor(grey_ramp_levels(total)[indices], dtype=torch.float64)
    torch.testing.assert_close(means, expected, atol=3.0, rtol=0.0)


def test_av1_falls_back_to_pyav(variety_dir):
    """decord 0.6 cannot open AV1; load_video then decodes with PyAV and resizes those exact frames."""
    import decord

    path = variety_dir / "av1.mp4"
    with pytest.raises(decord.DECORDError):
        decord.VideoReader(str(path), num_threads=1)

    sampled = load_video(path, DEFAULT_SPEC)
    with av.open(str(path)) as container:
        decoded = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])
    chosen = torch.from_numpy(decoded[[0, 6, 13, 19]]).permute(0, 3, 1, 2)
    expected = resize(chosen, [320, 448], interpolation=InterpolationMode.BICUBIC, antialias=True).float()
    assert sampled.frame_indices == [0, 6, 13, 19]
    assert torch.equal(sampled.frames, expected)
    probe_video(path)  # opens through the same fallback without raising


# --------------------------------------------------------------------------------------------------------
# Errors: every message names the source and the reason
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_videos(tmp_path_factory: pytest.TempPathFactory, parity_videos) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad")
    whole = parity_videos["qcif_25fps_3s"].read_bytes()
    truncated = root / "truncated.mp4"
    truncated.write_bytes(whole[: len(whole) // 3])  # the moov atom is at the end: it is cut off
    random_bytes = root / "random.mp4"
    random_bytes.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    empty = root / "empty.mp4"
    empty.write_bytes(b"")
    one_frame = write_video(root / "one_frame.mp4", gradient_clip(1, 32, 32), 8.0)
    return {
        "missing": root / "missing.mp4",
        "truncated": truncated,
        "random": random_bytes,
        "empty": empty,
        "one_frame": one_frame,
    }


BAD_FILE_REASONS = [
    ("missing", r"^no such file$"),
    ("truncated", r"^unreadable container: .+"),
    ("random", r"^unreadable container: .+"),
    ("empty", r"^unreadable container: Invalid data found when processing input$"),
    ("one_frame", r"^it has 1 frame\(s\); at least 2 are needed$"),
]


@pytest.mark.parametrize(("name", "reason"), BAD_FILE_REASONS)
@pytest.mark.parametrize("call", ["load_video", "probe_video"])
def test_bad_files_raise_video_decode_error(bad_videos, name, reason, call):
    """Missing, truncated, random, empty and single-frame files: VideoDecodeError naming file and cause.

    Both calls read the container header first, so an unreadable file reports FFmpeg's reason for it.
    """
    path = bad_videos[name]
    with pytest.raises(VideoDecodeError) as caught:
        if call == "load_video":
            load_video(path, TINY_SPEC)
        else:
            probe_video(path)
    error = caught.value
    assert error.source == str(path)
    assert str(error).startswith(f"cannot read video {path}: ")
    assert error.reason == str(error).removeprefix(f"cannot read video {path}: ")
    assert re.search(reason, error.reason), error.reason


def test_good_file_passes_probe(parity_videos):
    """probe_video returns the container's metadata for a readable clip with >= 2 frames: 5 frames at
    25 fps = 0.2 s of 64x48 h264, the count stated by the mp4 index (not estimated)."""
    assert probe_video(parity_videos["5_frames_25fps"]) == VideoInfo(
        total_frames=5, fps=25.0, duration_s=0.2, width=64, height=48, codec="h264", frames_estimated=False
    )


MEMORY_ERRORS = [
    pytest.param(
        np.zeros((4, 8, 8), np.uint8), 8.0,
        "frames must be 4-D (T, H, W, 3) uint8 or (T, 3, H, W) float, got shape (4, 8, 8)", id="3-D"
    ),
    pytest.param(
        np.zeros((4, 8, 8, 4), np.uint8), 8.0, "uint8 frames must be (T, H, W, 3), got shape (4, 8, 8, 4)",
        id="uint8-4-channels",
    ),
    pytest.param(
        np.zeros((4, 3, 8, 8), np.uint8), 8.0, "uint8 frames must be (T, H, W, 3), got shape (4, 3, 8, 8)",
        id="uint8-channels-first",
    ),
    pytest.param(
        torch.zeros(4, 4, 8, 8), 8.0, "float frames must be (T, 3, H, W), got shape (4, 4, 8, 8)",
        id="float-4-channels",
    ),
    pytest.param(
        torch.linspace(-1, 1, 4 * 3 * 8 * 8).reshape(4, 3, 8, 8), 8.0,
        "float frames must lie in [0, 1], got [-1, 1]", id="float-in-[-1,1]",
    ),
    pytest.param(
        torch.full((4, 3, 8, 8), 1.5), 8.0, "float frames must lie in [0, 1], got [1.5, 1.5]", id="float-above-1"
    ),
    pytest.param(
        torch.zeros(4, 3, 8, 8).index_fill_(0, torch.tensor([2]), float("nan")), 8.0,
        "float frames contain NaN or infinity", id="nan",
    ),
    pytest.param(
        torch.zeros(4, 3, 8, 8).index_fill_(0, torch.tensor([1]), float("inf")), 8.0,
        "float frames contain NaN or infinity", id="inf",
    ),
    pytest.param(
        np.zeros((4, 8, 8, 3), np.int32), 8.0, "frames must be uint8 or floating point, got torch.int32",
        id="int32",
    ),
    pytest.param(
        np.zeros((1, 8, 8, 3), np.uint8), 8.0, "it has 1 frame(s); at least 2 are needed", id="one-frame"
    ),
    pytest.param(np.zeros((4, 8, 8, 3), np.uint8), 0.0, "fps must be a positive number, got 0.0", id="fps-0"),
    pytest.param(np.zeros((4, 8, 8, 3), np.uint8), -25, "fps must be a positive number, got -25", id="fps-negative"),
    pytest.param(
        np.zeros((4, 8, 8, 3), np.uint8), float("nan"), "fps must be a positive number, got nan", id="fps-nan"
    ),
]


@pytest.mark.parametrize(("frames", "fps", "reason"), MEMORY_ERRORS)
def test_bad_memory_frames_raise_video_decode_error(frames, fps, reason):
    """Malformed in-memory frames raise VideoDecodeError naming the clip and the exact problem."""
    with pytest.raises(VideoDecodeError) as caught:
        load_video(VideoFrames(frames, fps=fps, name="rollout 7"), TINY_SPEC)
    assert caught.value.source == "rollout 7"
    assert caught.value.reason == reason
    assert str(caught.value) == f"cannot read video rollout 7: {reason}"


# --------------------------------------------------------------------------------------------------------
# VideoSpec
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_frames": 10, "max_frames": 8}, r"2 <= min_frames <= max_frames, got 10 and 8"),
        ({"min_frames": 1}, r"2 <= min_frames <= max_frames, got 1 and 768"),
        ({"min_pixels": 5000, "max_pixels": 4096}, r"0 < min_pixels <= max_pixels, got 5000 and 4096"),
        ({"min_pixels": 0}, r"0 < min_pixels <= max_pixels, got 0 and 200704"),
        ({"fps": 0.0}, r"fps must be a positive number, got 0.0"),
        ({"fps": -2.0}, r"fps must be a positive number, got -2.0"),
        ({"fps": float("nan")}, r"fps must be a positive number, got nan"),
        ({"fps": float("inf")}, r"fps must be a positive number, got inf"),
        ({"pixel_factor": 0}, r"pixel_factor and max_total_tokens must be positive"),
        ({"max_total_tokens": 0}, r"pixel_factor and max_total_tokens must be positive"),
    ],
)
def test_video_spec_rejects_invalid_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        VideoSpec(**kwargs)


def test_video_spec_defaults():
    """DeScore stage 1: 2 fps, 4-768 frames, 128 * 32 * 32 = 131072 to 448^2 = 200704 px, factor 32,
    0.9 * 128000 = 115200 total tokens."""
    assert VideoSpec().to_dict() == {
        "fps": 2.0,
        "min_frames": 4,
        "max_frames": 768,
        "min_pixels": 131072,
        "max_pixels": 200704,
        "pixel_factor": 32,
        "max_total_tokens": 115200,
    }


def test_video_spec_dict_round_trip():
    """to_dict -> (JSON) -> from_dict gives back an equal spec; missing keys take their defaults."""
    spec = VideoSpec(fps=1.5, min_frames=6, max_frames=64, min_pixels=2048, max_pixels=50176, pixel_factor=28)
    assert VideoSpec.from_dict(spec.to_dict()) == spec
    assert VideoSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert VideoSpec.from_dict({"fps": 4.0}) == VideoSpec(fps=4.0)
    assert VideoSpec.from_dict({}) == VideoSpec()


def test_video_spec_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match=r"unknown VideoSpec keys \['frame_rate', 'resolution'\]; known: \[") as caught:
        VideoSpec.from_dict({"fps": 2.0, "frame_rate": 2.0, "resolution": 448})
    assert "'max_pixels'" in str(caught.value)


@pytest.mark.parametrize(
    ("spec", "num_frames", "budget"),
    [
        # Default: per-frame cap min(768 * 1024 = 786432, 115200 * 1024 * 2 / n = 235929600 / n), floor
        # int(131072 * 1.05) = 137625, then at most max_pixels 200704.
        (DEFAULT_SPEC, 4, 200704),  # 58982400 / ... -> 786432 -> capped at 200704
        (DEFAULT_SPEC, 768, 200704),  # 235929600 / 768 = 307200 -> 200704
        (DEFAULT_SPEC, 1176, 200620),  # 235929600 / 1176 = 200620.4 -> int 200620
        (DEFAULT_SPEC, 2000, 137625),  # 117964.8 < floor 137625
        # Tiny: floor int(1024 * 1.05) = 1075, cap 4096.
        (TINY_SPEC, 8, 4096),
        (TINY_SPEC, 200_000, 1179),  # 235929600 / 200000 = 1179.6 -> 1179
        (TINY_SPEC, 400_000, 1075),  # 589.8 < floor 1075
        # A small token budget: 1000 tokens * 1024 px * 2 / n = 2048000 / n.
        (VideoSpec(max_total_tokens=1000, min_pixels=1024), 4, 200704),  # 512000 -> 200704
        (VideoSpec(max_total_tokens=1000, min_pixels=1024), 16, 128000),  # 2048000 / 16
        (VideoSpec(max_total_tokens=1000, min_pixels=1024), 30, 68266),  # 68266.67 -> 68266
        (VideoSpec(max_total_tokens=1000, min_pixels=1024), 3000, 1075),  # 682.7 < floor 1075
        # Factor 28 (Qwen2.5-VL): 768 * 784 = 602112, 115200 * 784 * 2 / 600 = 301056 -> max_pixels.
        (VideoSpec(pixel_factor=28, min_pixels=3136, max_pixels=1_000_000), 600, 301056),
        (VideoSpec(pixel_factor=28, min_pixels=3136, max_pixels=1_000_000), 4, 602112),
    ],
)
def test_frame_pixel_budget(spec, num_frames, budget):
    assert spec.frame_pixel_budget(num_frames) == budget
    assert isinstance(spec.frame_pixel_budget(num_frames), int)


def test_frame_budget_shrinks_long_clips():
    """With 1000 total tokens and 30 frames the budget is 68266 px (above), so a 360x640 clip sampled at
    30 frames is downsized: beta = sqrt(230400 / 68266) = 1.8371 -> floor(6.12) * 32 = 192,
    floor(10.89) * 32 = 320 -> 192x320 = 61440 px <= 68266."""
    spec = VideoSpec(fps=2.0, min_frames=30, max_frames=30, max_total_tokens=1000, min_pixels=1024)
    clip = np.zeros((30, 360, 640, 3), np.uint8)
    sampled = load_video(VideoFrames(clip, fps=2.0), spec)
    assert tuple(sampled.frames.shape) == (30, 3, 192, 320)
    assert sampled.frame_indices == list(range(30))
    assert math.isclose(sampled.sample_fps, 2.0)


# --------------------------------------------------------------------------------------------------------
# Bounded decoding: metadata-only probing, limits checked before decoding, seeking to the sampled frames
# --------------------------------------------------------------------------------------------------------


@pytest.fixture
def decoding_counts(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    return count_decoding(monkeypatch)


# A 10-minute clip: 6000 frames of 64x64 at 10 fps, grey level t mod 256 (decoded: 6000 * 64 * 64 * 3 bytes).
LONG_FRAMES, LONG_FPS, LONG_SIDE = 6000, 10.0, 64


@pytest.fixture(scope="module")
def long_videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The long clip as AV1 (libsvtav1, which decord 0.6 cannot read: the PyAV path) and as h264 (decord),
    with a keyframe every 100 frames."""
    root = tmp_path_factory.mktemp("long")
    levels = (np.arange(LONG_FRAMES) % 256).astype(np.uint8)
    clip = np.ascontiguousarray(np.broadcast_to(levels[:, None, None, None], (LONG_FRAMES, LONG_SIDE, LONG_SIDE, 3)))
    return {
        codec: write_video(root / f"long_{codec}.mp4", clip, LONG_FPS, codec=encoder, keyframe_interval=100)
        for codec, encoder in (("av1", "libsvtav1"), ("h264", "libx264"))
    }


@pytest.mark.parametrize("codec", ["av1", "h264"])
def test_probing_a_long_file_decodes_nothing(long_videos, decoding_counts, codec):
    """probe_video of a 10-minute file reads the container header only: no packet is demuxed, no frame
    decoded, decord never opens it, and its Python allocations peak far below the 73.7 MB
    (6000 * 64 * 64 * 3 bytes) that decoding the stream to RGB takes (the old PyAV path held all of it)."""
    import tracemalloc

    tracemalloc.start()
    try:
        info = probe_video(long_videos[codec], spec=DEFAULT_SPEC)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert info == VideoInfo(
        total_frames=6000, fps=10.0, duration_s=600.0, width=64, height=64, codec=codec, frames_estimated=False
    )
    assert decoding_counts == {"packets": 0, "frames": 0, "seeks": 0, "decord_opens": 0}
    decoded_stream_bytes = LONG_FRAMES * LONG_SIDE * LONG_SIDE * 3
    assert peak < decoded_stream_bytes / 100, peak


def test_loading_a_long_av1_file_decodes_only_near_the_sampled_frames(long_videos, decoding_counts):
    """The tiny spec samples 8 of the 6000 AV1 frames: linspace(0, 5999, 8) in steps of 857 ->
    [0, 857, 1714, 2571, 3428, 4285, 5142, 5999]. decord tries first and cannot open AV1; PyAV demuxes
    the packets once to index them (6000 plus the empty one PyAV yields at the end), decoding nothing.
    Frame 0 is decoded from the start; every later one after a seek to its keyframe (multiples of 100):
    857 - 800 + 1 = 58 frames, 1714 -> 15, 2571 -> 72, 3428 -> 29, 4285 -> 86, 5142 -> 43, 5999 -> 100;
    1 + 58 + 15 + 72 + 29 + 86 + 43 + 100 = 404 decoded frames in 7 seeks, instead of 6000. Frame t shows
    grey t mod 256, within 3 levels after lossy coding."""
    with av.open(str(long_videos["av1"])) as container:
        keyframes = [index for index, packet in enumerate(container.demux(video=0)) if packet.is_keyframe]
    assert keyframes == list(range(0, LONG_FRAMES, 100))
    decoding_counts.update(packets=0)

    sampled = load_video(long_videos["av1"], TINY_SPEC)

    assert sampled.frame_indices == [0, 857, 1714, 2571, 3428, 4285, 5142, 5999]
    assert decoding_counts == {"packets": 6001, "frames": 404, "seeks": 7, "decord_opens": 1}
    means = sampled.frames.mean(dim=(1, 2, 3)).double()
    expected = torch.tensor([index % 256 for index in sampled.frame_indices], dtype=torch.float64)
    torch.testing.assert_close(means, expected, atol=3.0, rtol=0.0)


@pytest.fixture(scope="module")
def ten_second_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """250 frames of 64x48 at 25 fps = 10 s; the default spec samples 20 of them."""
    return write_video(tmp_path_factory.mktemp("limits") / "ten_seconds.mp4", gradient_clip(250, 48, 64), 25.0)


LIMIT_CASES = [
    pytest.param(
        DecodeLimits(max_duration_s=5.0),
        "its duration 10.0 s exceeds DecodeLimits.max_duration_s = 5 s; "
        "to admit it, pass --max_video_duration_s 10 (command line) or "
        "limits=reward.video.DecodeLimits(max_duration_s=10) (Python)",
        id="duration",
    ),
    pytest.param(
        DecodeLimits(max_pixels_per_frame=3000),
        "its frame size 64x48 = 3,072 px exceeds DecodeLimits.max_pixels_per_frame = 3,000 px; "
        "to admit it, pass --max_video_frame_pixels 3072 (command line) or "
        "limits=reward.video.DecodeLimits(max_pixels_per_frame=3072) (Python)",
        id="resolution",
    ),
    # 20 sampled frames * 64 * 48 * 3 bytes = 184,320 bytes = 0.00017 GiB.
    pytest.param(
        DecodeLimits(max_decoded_bytes=100_000),
        "its 20 sampled frames decode to 184,320 bytes (0.00 GiB), above DecodeLimits.max_decoded_bytes = "
        "100,000 bytes (or sample fewer frames: VideoSpec.fps, max_frames); "
        "to admit it, pass --max_video_decoded_bytes 184320 (command line) or "
        "limits=reward.video.DecodeLimits(max_decoded_bytes=184320) (Python)",
        id="decoded-bytes",
    ),
    pytest.param(
        DecodeLimits(max_duration_s=9.5, max_pixels_per_frame=2048),
        "its duration 10.0 s exceeds DecodeLimits.max_duration_s = 9.5 s; its frame size 64x48 = 3,072 px "
        "exceeds DecodeLimits.max_pixels_per_frame = 2,048 px; to admit it, pass "
        "--max_video_duration_s 10 --max_video_frame_pixels 3072 (command line) or "
        "limits=reward.video.DecodeLimits(max_duration_s=10, max_pixels_per_frame=3072) (Python)",
        id="two-at-once",
    ),
]


@pytest.mark.parametrize(("limits", "reason"), LIMIT_CASES)
def test_over_limit_file_is_refused_before_decoding(ten_second_clip, decoding_counts, limits, reason):
    """Each exceeded limit is named with the measured value, the limit and the value that would admit the
    file; load_video refuses before decord opens the file or PyAV reads a packet."""
    with pytest.raises(VideoDecodeError) as caught:
        load_video(ten_second_clip, DEFAULT_SPEC, limits=limits)
    assert caught.value.source == str(ten_second_clip)
    assert caught.value.reason == reason
    assert decoding_counts == {"packets": 0, "frames": 0, "seeks": 0, "decord_opens": 0}


def test_probe_checks_decoded_bytes_only_when_given_a_spec(ten_second_clip):
    """Without a spec the number of sampled frames is unknown, so only duration and size are checked."""
    limits = DecodeLimits(max_decoded_bytes=100_000)
    assert probe_video(ten_second_clip, limits=limits).total_frames == 250
    with pytest.raises(VideoDecodeError, match=r"its 20 sampled frames decode to 184,320 bytes"):
        probe_video(ten_second_clip, limits=limits, spec=DEFAULT_SPEC)


def test_raised_limits_admit_the_file_with_unchanged_frames(ten_second_clip):
    """Limits only accept or refuse: an admitted file loads exactly as with the defaults."""
    limits = DecodeLimits(max_duration_s=10.0, max_pixels_per_frame=3072, max_decoded_bytes=184_320)
    admitted = load_video(ten_second_clip, DEFAULT_SPEC, limits=limits)
    assert torch.equal(admitted.frames, load_video(ten_second_clip, DEFAULT_SPEC).frames)


def test_default_limits_refuse_a_ten_minute_8k_file(tmp_path):
    """Two 7680x4320 frames at 1/300 fps: a real 10-minute 8K file, refused by resolution (33,177,600 px
    > 4096 * 2160 = 8,847,360) from its header alone."""
    frames = np.zeros((2, 4320, 7680, 3), np.uint8)
    frames[1] = 200
    path = write_video(tmp_path / "8k.mp4", frames, 1 / 300)
    with pytest.raises(VideoDecodeError) as caught:
        load_video(path, DEFAULT_SPEC)
    assert caught.value.reason == (
        "its frame size 7680x4320 = 33,177,600 px exceeds DecodeLimits.max_pixels_per_frame = 8,847,360 px; "
        "to admit it, pass --max_video_frame_pixels 33177600 (command line) or "
        "limits=reward.video.DecodeLimits(max_pixels_per_frame=33177600) (Python)"
    )
    assert probe_video(path, limits=DecodeLimits(max_pixels_per_frame=7680 * 4320)).duration_s == 600.0


def _metadata(minutes: float, width: int, height: int, fps: float = 30.0) -> VideoInfo:
    frames = round(minutes * 60 * fps)
    return VideoInfo(frames, fps, minutes * 60, width, height, codec="h264", frames_estimated=False)


@pytest.mark.parametrize(
    ("info", "refused"),
    [
        # 30 min of 1080p30: 768 sampled frames (the default max) * 1920 * 1080 * 3 = 4.45 GiB <= 8 GiB.
        (_metadata(30, 1920, 1080), []),
        # 1 min of 4K UHD: 120 frames * 3840 * 2160 * 3 = 2.78 GiB.
        (_metadata(1, 3840, 2160), []),
        # 2 min of DCI 4K: 240 frames * 4096 * 2160 * 3 = 5.93 GiB.
        (_metadata(2, 4096, 2160), []),
        # 10 min of 4K UHD: 768 frames * 24,883,200 bytes = 17.8 GiB of sampled frames.
        (_metadata(10, 3840, 2160), ["max_decoded_bytes"]),
        # 10 min of 8K: 33,177,600 px per frame, 768 * 99.5 MB = 71 GiB.
        (_metadata(10, 7680, 4320), ["max_pixels_per_frame", "max_decoded_bytes"]),
        # A 1-hour 480p stream: 7,200 s > 1,800 s.
        (_metadata(60, 854, 480), ["max_duration_s"]),
    ],
    ids=["30min-1080p", "1min-4k-uhd", "2min-dci-4k", "10min-4k-uhd", "10min-8k", "1h-480p"],
)
def test_default_limits(info, refused):
    """What the defaults admit and refuse at the default spec (2 fps, at most 768 sampled frames)."""
    sampled = min(768, round(info.duration_s * 2))
    assert sorted(_limit_problems(info, DecodeLimits(), sampled_frames=sampled)) == sorted(refused)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_duration_s": 0.0}, "DecodeLimits.max_duration_s must be a positive number, got 0.0"),
        ({"max_duration_s": float("inf")}, "DecodeLimits.max_duration_s must be a positive number, got inf"),
        ({"max_pixels_per_frame": -1}, "DecodeLimits.max_pixels_per_frame must be a positive number, got -1"),
        ({"max_decoded_bytes": 0}, "DecodeLimits.max_decoded_bytes must be a positive number, got 0"),
    ],
)
def test_decode_limits_reject_invalid_values(kwargs, message):
    with pytest.raises(ConfigError) as caught:
        DecodeLimits(**kwargs)
    assert str(caught.value) == message


def test_probe_estimates_frames_when_the_container_states_none(tmp_path):
    """WebM headers carry no frame count: 100 frames at 25 fps last 4.0 s -> 4.0 * 25 = 100 estimated;
    the PyAV decoder path (decord cannot read AV1) counts the 100 packets itself."""
    path = write_video(tmp_path / "av1.webm", gradient_clip(100, 48, 64), 25.0, codec="libsvtav1")
    info = probe_video(path)
    assert (info.total_frames, info.duration_s, info.frames_estimated, info.codec) == (100, 4.0, True, "av1")
    assert open_pyav(str(path)).total_frames == 100


class _UnseekableSink:
    """A write-only file: the muxer cannot go back to fill in duration and index, as when streaming."""

    def __init__(self, file) -> None:
        self._file = file

    def write(self, data: bytes) -> int:
        return self._file.write(data)


def test_streamed_recording_without_duration_loads(tmp_path):
    """A Matroska file written as a stream (like a browser's MediaRecorder WebM) has no frame count, no
    duration and no cues. decord refuses it; the probe counts its 30 packets (30 / 25 fps = 1.2 s) and
    PyAV decodes the sampled frames, [0, 10, 19, 29] (linspace(0, 29, 4)), exactly as a full decode."""
    import decord

    path = tmp_path / "streamed.mkv"
    clip = gradient_clip(30, 48, 64)
    with open(path, "wb") as file, av.open(_UnseekableSink(file), mode="w", format="matroska") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.height, stream.width, stream.pix_fmt = 48, 64, "yuv420p"
        for image in clip:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    with av.open(str(path)) as container:
        assert (container.duration, container.streams.video[0].frames) == (None, 0)
        full = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])
    with pytest.raises(decord.DECORDError):
        decord.VideoReader(str(path), num_threads=1)

    assert probe_video(path) == VideoInfo(
        total_frames=30, fps=25.0, duration_s=1.2, width=64, height=48, codec="h264", frames_estimated=False
    )
    sampled = load_video(path, DEFAULT_SPEC)
    chosen = torch.from_numpy(full[[0, 10, 19, 29]]).permute(0, 3, 1, 2)
    expected = resize(chosen, [320, 448], interpolation=InterpolationMode.BICUBIC, antialias=True).float()
    assert sampled.frame_indices == [0, 10, 19, 29]
    assert torch.equal(sampled.frames, expected)
