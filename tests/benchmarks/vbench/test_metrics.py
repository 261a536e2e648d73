"""VBench's formulas, preprocessing sizes and rules, with answers worked out by hand from the stubs' outputs.

Videos are real lossless h264 files decoded by the kit's decoder, as the job reads them.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from benchmarks.vbench.metrics import (
    DIMENSIONS,
    Extractors,
    VideoScore,
    aesthetic_quality,
    background_consistency,
    clip_inputs,
    dino_inputs,
    first_previous_similarities,
    flow_frame_interval,
    imaging_quality,
    imaging_size,
    motion_rule,
    motion_scores,
    score_video,
    shorter_side_size,
    subject_consistency,
    temporal_flickering,
)
from benchmarks.vbench.results import (
    aggregate,
    eval_results,
    normalized,
    partial_quality,
    partial_quality_label,
)
from reward.decoding import open_reader

from .extractor_stubs import (
    BLUE,
    RED,
    ColourKeyedEncoder,
    ConstantFlow,
    LinearTower,
    ScriptedQuality,
    ShiftFlow,
    TimmDino,
    solid_clip,
    sliding_clip,
    static_clip,
    write_clip,
)


def decoded(path) -> tuple[torch.Tensor, float]:
    reader = open_reader(str(path))
    return reader.frames(list(range(reader.total_frames))), reader.fps


# ----- consistency ------------------------------------------------------------------------------------------


def test_static_video_has_consistency_exactly_one_and_is_not_dynamic(tmp_path):
    """Identical frames give identical features, so every cosine is 1 and s_i = (1 + 1)/2 = 1; a flow that finds
    the true shift finds none, so no pair moves."""
    frames, fps = decoded(write_clip(tmp_path / "static.mp4", static_clip(6), fps=8))
    assert torch.equal(frames, frames[:1].expand_as(frames))
    subject = subject_consistency(frames, TimmDino(), batch_size=4)
    background = background_consistency(frames, LinearTower(512), batch_size=4)
    assert subject == VideoScore(value=1.0, pairs=5, similarity_sum=5.0)
    assert background == VideoScore(value=1.0, pairs=5, similarity_sum=5.0)
    motion = motion_scores(frames, ShiftFlow(), fps=fps)
    assert motion.pair_scores == [0.0] * 5 and not motion.dynamic


def test_sliding_video_is_dynamic(tmp_path):
    """16 fps → every 2nd frame; a 2 px/frame slide is 4 px per kept pair, above 6·64/256 = 1.5 px, on all 3 pairs."""
    frames, fps = decoded(write_clip(tmp_path / "slide.mp4", sliding_clip(8, step=2), fps=16))
    motion = motion_scores(frames, ShiftFlow(), fps=fps)
    assert motion.interval == 2 and motion.pair_scores == [4.0, 4.0, 4.0]
    assert motion.rule == (1.5, 1) and motion.dynamic


@pytest.mark.parametrize("blue_feature, expected", [
    # cos(red, blue) = 3/5: s = 1, 1 (before the cut), 0.6 (at it), then (1 + 0.6)/2 = 0.8 four times → 5.8 / 7
    ((3.0, 4.0, 0.0), 5.8 / 7),
    # cos = −3/5 is clamped to 0: s = 1, 1, 0, then (1 + 0)/2 four times → 4 / 7
    ((-3.0, 4.0, 0.0), 4.0 / 7),
])
def test_a_scene_cut_lowers_consistency_by_the_formula(tmp_path, blue_feature, expected):
    """8 frames, red for 3 then blue for 5. Features are fixed per colour: red (1, 0, 0), blue as given."""
    clip = solid_clip([RED] * 3 + [BLUE] * 5)
    frames, _ = decoded(write_clip(tmp_path / "cut.mp4", clip, fps=16))
    for metric in (subject_consistency, background_consistency):
        encoder = ColourKeyedEncoder(torch.tensor([1.0, 0.0, 0.0]), torch.tensor(blue_feature))
        score = metric(frames, encoder, batch_size=3)
        assert encoder.calls == 3 and encoder.images == 8  # batches of 3, 3, 2
        assert score.pairs == 7 and score.value == pytest.approx(expected, abs=1e-12)
        assert 1.0 - score.value == pytest.approx(1.0 - expected, abs=1e-12)


def test_first_previous_similarities_on_hand_made_features():
    """f0 = (1, 0), f1 = (0, 1), f2 = (1, 1): s1 = ½(cos(f0,f1) + cos(f0,f1)) = 0; s2 = ½(cos(f1,f2) + cos(f0,f2))
    = ½(1/√2 + 1/√2) = 1/√2. Scale does not matter (the cosine is scale-free)."""
    features = torch.tensor([[1.0, 0.0], [0.0, 3.0], [2.0, 2.0]])
    assert first_previous_similarities(features).tolist() == pytest.approx([0.0, 1 / math.sqrt(2)], abs=1e-15)
    with pytest.raises(ValueError, match="at least 2 frames, got 1"):
        first_previous_similarities(features[:1])


# ----- preprocessing sizes --------------------------------------------------------------------------------


def test_encoder_inputs_follow_vbench_sizes():
    """DINO: shorter side 224, no crop (480×832 → 224×388); CLIP: then a 224 centre crop."""
    frames = torch.zeros(1, 3, 480, 832, dtype=torch.uint8)
    assert shorter_side_size(480, 832, side=224) == (224, 388) and shorter_side_size(832, 480, side=224) == (388, 224)
    assert dino_inputs(frames).shape == (1, 3, 224, 388)
    assert clip_inputs(frames).shape == (1, 3, 224, 224)
    # black after ImageNet normalisation is -mean/std per channel
    assert dino_inputs(frames)[0, :, 0, 0].tolist() == pytest.approx([-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225])


@pytest.mark.parametrize("size, expected", [
    ((480, 832), (295, 512)),  # 512/832 · 480 = 295.38 → 295 (int truncates)
    ((720, 1280), (288, 512)),
    ((480, 480), (480, 480)),  # longer side ≤ 512: untouched
    ((512, 384), (512, 384)),
])
def test_imaging_resize_on_the_longer_side(size, expected):
    assert imaging_size(*size) == expected


def test_imaging_quality_per_video_mos_is_raw_and_the_aggregate_is_over_100(tmp_path):
    """A 480×832 clip of 3 frames reaches the IQA model as 295×512 images in [0, 1], one per call; the scripted
    MOS 60, 70, 80 average to 70 per video (raw). A second video at 480×480 (untouched) scores 50, 50, 50, and
    the aggregate is (70 + 50)/2/100 = 0.6."""
    wide, _ = decoded(write_clip(tmp_path / "wide.mp4", solid_clip([RED] * 3, height=480, width=832), fps=8))
    square, _ = decoded(write_clip(tmp_path / "square.mp4", solid_clip([BLUE] * 3, height=480, width=480), fps=8))
    iqa = ScriptedQuality(60.0, 70.0, 80.0)
    first = imaging_quality(wide, iqa)
    assert iqa.shapes == [(1, 3, 295, 512)] * 3 and iqa.maximum <= 1.0
    second = imaging_quality(square, ScriptedQuality(50.0))
    assert (first.value, second.value) == (70.0, 50.0)
    assert aggregate("imaging_quality", [first, second]) == pytest.approx(0.6, abs=1e-15)


# ----- aesthetic ----------------------------------------------------------------------------------------------


def test_aesthetic_is_the_head_of_normalised_features_over_ten(tmp_path):
    """Red frames have feature r, blue ones b (random 768-d); the head is w·x + c. Per frame head(f/|f|)/10;
    the video is 2 red + 3 blue frames, so its score is (2·h(r) + 3·h(b)) / 5 / 10."""
    frames, _ = decoded(write_clip(tmp_path / "mix.mp4", solid_clip([RED] * 2 + [BLUE] * 3), fps=8))
    generator = torch.Generator().manual_seed(0)
    red, blue = torch.randn(768, generator=generator), torch.randn(768, generator=generator)
    head = torch.nn.Linear(768, 1)
    weight, bias = head.weight.detach().double()[0], float(head.bias.detach())

    def by_hand(feature: torch.Tensor) -> float:
        unit = feature.double() / feature.double().norm()
        return float(weight @ unit) + bias

    expected = (2 * by_hand(red) + 3 * by_hand(blue)) / 5 / 10
    score = aesthetic_quality(frames, ColourKeyedEncoder(red, blue), head=head, batch_size=2)
    assert score.value == pytest.approx(expected, abs=1e-6)


# ----- dynamic degree -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fps, interval", [(8, 1), (10, 1), (16, 2), (20, 2), (24, 3), (30, 4)])
def test_flow_frame_interval(fps, interval):
    """max(1, round(fps/8)) with Python's round, half to even: 10/8 = 1.25 → 1, 20/8 = 2.5 → 2, 30/8 = 3.75 → 4."""
    assert flow_frame_interval(fps) == interval


@pytest.mark.parametrize("height, width, kept, threshold, pairs", [
    (480, 832, 41, 11.25, 10),   # Wan at 16 fps: 81 frames → 41 kept; 6·480/256 = 11.25; round(10.25) = 10
    (720, 1280, 81, 16.875, 20),  # 6·720/256 = 16.875; round(20.25) = 20
    (480, 832, 10, 11.25, 2),    # round(2.5) = 2 (half to even; half-up would say 3)
    (480, 832, 6, 11.25, 2),     # round(1.5) = 2
    (64, 64, 2, 1.5, 0),         # round(0.5) = 0
])
def test_motion_rule(height, width, kept, threshold, pairs):
    assert motion_rule(height, width, kept_frames=kept) == (threshold, pairs)


@pytest.mark.parametrize("fps, interval, pairs", [(8, 1, 23), (16, 2, 11), (24, 3, 7), (30, 4, 5)])
def test_flow_pairs_follow_the_container_fps(tmp_path, fps, interval, pairs):
    """24 frames written at ``fps``: every ``interval``-th frame is kept, ceil(24/interval) frames, one pair fewer."""
    frames, read_fps = decoded(write_clip(tmp_path / "clip.mp4", solid_clip([RED] * 24), fps=fps))
    flow = ConstantFlow(0.0)
    motion = motion_scores(frames, flow, fps=read_fps)
    assert read_fps == fps and motion.interval == interval and len(flow.shapes) == pairs
    assert motion.rule.required_pairs == round(4 * (pairs + 1) / 16)


@pytest.mark.parametrize("height, width, threshold", [(480, 832, 11.25), (720, 1280, 16.875)])
def test_motion_threshold_on_480p_and_720p_files(tmp_path, height, width, threshold):
    """3 frames at 8 fps: all kept, 2 pairs, round(4·3/16) = round(0.75) = 1 pair must move. A flow of exactly
    the threshold does not count (VBench compares with >); one a hair above does. The flow sees full-size frames."""
    frames, fps = decoded(write_clip(tmp_path / "clip.mp4", solid_clip([RED] * 3, height=height, width=width), 8))
    at_threshold = ConstantFlow(threshold)
    assert not motion_scores(frames, at_threshold, fps=fps).dynamic
    assert at_threshold.shapes == [(1, 3, height, width)] * 2
    assert motion_scores(frames, ConstantFlow(threshold + 1e-3), fps=fps).dynamic


def test_required_pairs_count_with_bankers_rounding(tmp_path):
    """10 frames at 8 fps: 9 pairs, round(4·10/16) = round(2.5) = 2 pairs needed. Two moving pairs make it
    dynamic, one does not."""
    frames, fps = decoded(write_clip(tmp_path / "ten.mp4", solid_clip([RED] * 10), fps=8))
    assert motion_scores(frames, ConstantFlow(2.0, 2.0, 0.0), fps=fps).dynamic
    assert not motion_scores(frames, ConstantFlow(2.0, 0.0), fps=fps).dynamic


def test_flow_frames_are_padded_to_multiples_of_eight(tmp_path):
    """RAFT needs sides divisible by 8: 50×70 is replicate-padded to 56×72 (3 + 3 rows, 1 + 1 columns)."""
    frames = torch.arange(50 * 70, dtype=torch.float32).reshape(1, 1, 50, 70).expand(2, 3, 50, 70)
    flow = ConstantFlow(1.0)
    motion_scores(frames, flow, fps=8.0)
    assert flow.shapes == [(1, 3, 56, 72)]


# ----- temporal flickering --------------------------------------------------------------------------------


def test_temporal_flickering_of_a_constant_video_is_one(tmp_path):
    frames, _ = decoded(write_clip(tmp_path / "constant.mp4", static_clip(5), fps=8))
    assert temporal_flickering(frames).value == 1.0


def test_temporal_flickering_is_one_minus_the_mean_absolute_difference_over_255(tmp_path):
    """Red, blue, red, blue: m = mean over the 3 pairs of mean |frame_{t+1} − frame_t| (worked out in numpy
    from the decoded frames); the score is (255 − m)/255."""
    frames, _ = decoded(write_clip(tmp_path / "flicker.mp4", solid_clip([RED, BLUE, RED, BLUE]), fps=8))
    pixels = frames.numpy().astype(np.float64)
    mean_difference = np.mean([np.abs(pixels[t + 1] - pixels[t]).mean() for t in range(3)])
    assert mean_difference > 100
    assert temporal_flickering(frames).value == pytest.approx((255 - mean_difference) / 255, abs=1e-12)


# ----- one dimension of one video, and the extractors it needs ------------------------------------------------


def test_extractors_needed_per_dimension():
    assert [Extractors.required(name) for name in DIMENSIONS] == [
        ("dino",), ("clip_b32",), ("clip_l14", "aesthetic_head"), ("musiq",), ("raft",), ()]
    assert Extractors(clip_l14=LinearTower(768)).missing(["aesthetic_quality", "subject_consistency"]) == [
        "dino", "aesthetic_head"]
    with pytest.raises(ValueError, match="unknown VBench dimension.*motion_smoothness"):
        Extractors.required("motion_smoothness")
    with pytest.raises(ValueError, match="dynamic_degree needs the extractor.*raft"):
        score_video("dynamic_degree", torch.zeros(2, 3, 8, 8), fps=8.0, extractors=Extractors(), batch_size=1)


# ----- aggregates, normalisation, partial quality, JSON layout ----------------------------------------------------


def test_consistency_aggregate_is_frame_weighted():
    """A: 2 pairs summing to 1.0 (per video 0.5); B: 8 pairs summing to 8.0 (per video 1.0). Frame-weighted:
    (1 + 8)/(2 + 8) = 0.9, not the video mean 0.75. The other dimensions take the video mean."""
    first, second = VideoScore(0.5, pairs=2, similarity_sum=1.0), VideoScore(1.0, pairs=8, similarity_sum=8.0)
    assert aggregate("subject_consistency", [first, second]) == pytest.approx(0.9, abs=1e-15)
    assert aggregate("background_consistency", [first, second]) == pytest.approx(0.9, abs=1e-15)
    assert aggregate("aesthetic_quality", [first, second]) == 0.75
    assert aggregate("dynamic_degree", [VideoScore(1.0), VideoScore(0.0), VideoScore(0.0), VideoScore(1.0)]) == 0.5
    with pytest.raises(ValueError, match="no video"):
        aggregate("temporal_flickering", [])


def test_normalisation_constants_and_partial_quality():
    """n = (x − Min)/(Max − Min) with VBench's constants. The partial score weighs dynamic degree 0.5, the rest 1:
    subject 0.9512 → 0.8050/0.8538; background 0.9612 → 0.6997/0.7385; flickering 0.9800 → 0.3507/0.3707;
    aesthetic 0.55, imaging 0.66, dynamic 0.5 unchanged; Σ w·n / 5.5."""
    raw = {"subject_consistency": 0.9512, "background_consistency": 0.9612, "temporal_flickering": 0.98,
           "aesthetic_quality": 0.55, "imaging_quality": 0.66, "dynamic_degree": 0.5}
    expected = {"subject_consistency": 0.805 / 0.8538, "background_consistency": 0.6997 / 0.7385,
                "temporal_flickering": 0.3507 / 0.3707, "aesthetic_quality": 0.55, "imaging_quality": 0.66,
                "dynamic_degree": 0.5}
    scores = {name: normalized(name, value) for name, value in raw.items()}
    assert scores == pytest.approx(expected, abs=1e-12)
    weighted = sum(expected.values()) - 0.5 * 0.5
    assert partial_quality(scores) == pytest.approx(weighted / 5.5, abs=1e-12)
    assert partial_quality({"dynamic_degree": 0.4}) == pytest.approx(0.4)
    assert partial_quality({}) is None
    label = partial_quality_label(list(raw))
    assert "6 of VBench's 7" in label and "not VBench's Quality" in label


def test_eval_results_layout_is_what_vbench_final_score_reads():
    """VBench's cal_final_score takes element 0 of each dimension's entry, keyed with spaces for underscores."""
    per_video = {
        "background_consistency": {"/v/a.mp4": VideoScore(0.9, pairs=4, similarity_sum=3.6)},
        "dynamic_degree": {"/v/a.mp4": VideoScore(1.0)},
        "imaging_quality": {"/v/a.mp4": VideoScore(66.5)},
    }
    aggregates = {"background_consistency": 0.9, "dynamic_degree": 1.0, "imaging_quality": 0.665}
    layout = json.loads(json.dumps(eval_results(aggregates, per_video)))
    assert {key.replace("_", " "): entry[0] for key, entry in layout.items()} == {
        "background consistency": 0.9, "dynamic degree": 1.0, "imaging quality": 0.665}
    assert layout["background_consistency"][1] == [
        {"video_path": "/v/a.mp4", "video_results": 0.9, "video_sim": 3.6, "cnt_per_video": 4}]
    assert layout["dynamic_degree"][1] == [{"video_path": "/v/a.mp4", "video_results": True}]
    assert layout["imaging_quality"][1] == [{"video_path": "/v/a.mp4", "video_results": 66.5}]
