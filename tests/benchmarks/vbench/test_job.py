"""``descore bench vbench``'s job: real mp4 files in, VBench's files out, cached per video, resumed after a kill.

The extractors are injected (stubs with known answers); ``--weights`` holds stand-in bytes at VBench's file
names, which the job hashes to tell one set of weights from another.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.vbench import official
from benchmarks.vbench.job import VBenchConfig, format_report, run_vbench
from benchmarks.vbench.weights import WEIGHT_FILES
from benchmarks.vbench.metrics import Extractors
from reward.errors import ConfigError, DataError
from reward.run_record import RunMismatchError

from .extractor_stubs import (
    BLUE,
    RED,
    ColourKeyedEncoder,
    ScriptedQuality,
    ShiftFlow,
    solid_clip,
    sliding_clip,
    static_clip,
    write_clip,
)

CUT_VALUE = 5.8 / 7  # 3 red then 5 blue frames, cos(red, blue) = 3/5 (worked out in test_metrics)


def stand_in_weights(folder: Path) -> Path:
    for name, file in WEIGHT_FILES.items():
        relative = file.relative_path
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_bytes(f"stand-in {name} weights".encode())
    return folder


def encoder() -> ColourKeyedEncoder:
    return ColourKeyedEncoder(torch.tensor([1.0, 0.0, 0.0]), torch.tensor([3.0, 4.0, 0.0]))


def stub_extractors() -> Extractors:
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    return Extractors(
        dino=encoder(), clip_b32=encoder(),
        clip_l14=ColourKeyedEncoder(torch.randn(768, generator=generator), torch.randn(768, generator=generator)),
        aesthetic_head=torch.nn.Linear(768, 1), musiq=ScriptedQuality(50.0), raft=ShiftFlow())


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """static: 6 frames at 8 fps; cut: 3 red + 5 blue at 16 fps; slide: 8 frames moving 2 px each, 16 fps."""
    folder = tmp_path_factory.mktemp("videos")
    write_clip(folder / "static.mp4", static_clip(6), fps=8)
    write_clip(folder / "cut.mp4", solid_clip([RED] * 3 + [BLUE] * 5), fps=16)
    write_clip(folder / "slide.mp4", sliding_clip(8, step=2), fps=16)
    return folder


@pytest.fixture()
def weights(tmp_path) -> Path:
    return stand_in_weights(tmp_path / "weights")


def config(videos: Path, weights: Path, output: Path, **overrides) -> VBenchConfig:
    return VBenchConfig(videos=str(videos), weights=str(weights), output_dir=str(output), **overrides)


def test_all_six_dimensions_end_to_end(clips, weights, tmp_path):
    """Consistency: static 1 (5 pairs), cut 5.8/7 (7 pairs), slide 1 (7 pairs; a shift keeps the colour);
    frame-weighted aggregate (5 + 5.8 + 7)/19, not the video mean. Dynamic: only the slide. MUSIQ says 50 per
    frame: 50 per video, 0.5 aggregated. A static clip does not flicker."""
    result = run_vbench(config(clips, weights, tmp_path / "base"), extractors=stub_extractors())
    static, cut, slide = (str((clips / name).resolve()) for name in ("static.mp4", "cut.mp4", "slide.mp4"))
    for dimension in ("subject_consistency", "background_consistency"):
        assert result.per_video[static][dimension] == 1.0 and result.per_video[slide][dimension] == 1.0
        assert result.per_video[cut][dimension] == pytest.approx(CUT_VALUE, abs=1e-12)
        assert result.aggregate[dimension] == pytest.approx(17.8 / 19, abs=1e-12)
        assert result.aggregate[dimension] != pytest.approx((2 + CUT_VALUE) / 3, abs=1e-4)
    assert {video: scores["dynamic_degree"] for video, scores in result.per_video.items()} == {
        cut: 0.0, slide: 1.0, static: 0.0}
    assert result.aggregate["dynamic_degree"] == pytest.approx(1 / 3)
    assert [scores["imaging_quality"] for scores in result.per_video.values()] == [50.0] * 3
    assert result.aggregate["imaging_quality"] == 0.5
    assert result.per_video[static]["temporal_flickering"] == 1.0
    assert result.normalized["subject_consistency"] == pytest.approx((17.8 / 19 - 0.1462) / 0.8538)

    layout = json.loads((tmp_path / "base" / "base_eval_results.json").read_text())
    assert {name: entry[0] for name, entry in layout.items()} == result.aggregate
    assert layout["dynamic_degree"][1] == [{"video_path": cut, "video_results": False},
                                           {"video_path": slide, "video_results": True},
                                           {"video_path": static, "video_results": False}]
    assert layout["imaging_quality"][1][0]["video_results"] == 50.0

    summary = json.loads((tmp_path / "base" / "results.json").read_text())
    assert summary["weights"]["files"] == {
        file.relative_path: {"sha256": hashlib.sha256((weights / file.relative_path).read_bytes()).hexdigest(),
                             "published": False if file.sha256 else None} for file in WEIGHT_FILES.values()}
    assert summary["partial_quality"]["value"] == result.partial_quality
    assert "not VBench's Quality" in summary["partial_quality"]["label"]
    assert summary["videos"]["count"] == 3 and "torch" in summary["versions"]
    report = format_report(result)
    assert "subject_consistency" in report and "6 of VBench's 7" in report


class Killed(RuntimeError):
    """Stands for the process dying."""


class DiesOnCall(ColourKeyedEncoder):
    def __init__(self, call: int) -> None:
        super().__init__(torch.tensor([1.0, 0.0, 0.0]), torch.tensor([3.0, 4.0, 0.0]))
        self.dies_on = call

    def __call__(self, images):
        if self.calls + 1 == self.dies_on:
            raise Killed("killed")
        return super().__call__(images)


def test_a_killed_run_resumes_without_recomputing(clips, weights, tmp_path):
    """The subject encoder dies on the third video (sorted: cut, slide, static → on static): two videos are on
    disk per dimension. The re-run measures only the third (one encoder call, its 5 flow pairs) and ends with
    the same files as an uninterrupted run; a third run computes nothing."""
    dimensions = ["subject_consistency", "dynamic_degree", "temporal_flickering"]
    output = tmp_path / "run"
    with pytest.raises(Killed):
        run_vbench(config(clips, weights, output, dimensions=dimensions),
                   extractors=Extractors(dino=DiesOnCall(3), raft=ShiftFlow()))
    for dimension in dimensions:
        assert len((output / "per_video" / f"{dimension}.jsonl").read_text().splitlines()) == 2
    with (output / "per_video" / "subject_consistency.jsonl").open("a") as handle:
        handle.write('{"video": "/torn/by/the/kill.mp4", "val')  # a line cut short: dropped on resume

    dino, flow = encoder(), ShiftFlow()
    resumed = run_vbench(config(clips, weights, output, dimensions=dimensions),
                         extractors=Extractors(dino=dino, raft=flow))
    assert (dino.calls, flow.calls) == (1, 5)
    again = run_vbench(config(clips, weights, output, dimensions=dimensions),
                       extractors=Extractors(dino=(dino := encoder()), raft=(flow := ShiftFlow())))
    assert (dino.calls, flow.calls) == (0, 0) and again == resumed

    whole = run_vbench(config(clips, weights, tmp_path / "whole", dimensions=dimensions, name="run"),
                       extractors=Extractors(dino=encoder(), raft=ShiftFlow()))
    assert (whole.aggregate, whole.per_video) == (resumed.aggregate, resumed.per_video)
    assert (tmp_path / "whole" / "run_eval_results.json").read_text() == (output / "run_eval_results.json").read_text()


def test_other_weights_are_refused_and_a_new_dimension_is_added(clips, weights, tmp_path):
    output = tmp_path / "run"
    run_vbench(config(clips, weights, output, dimensions=["subject_consistency"]), extractors=Extractors(dino=encoder()))
    dino, clip = encoder(), encoder()
    both = run_vbench(config(clips, weights, output, dimensions=["subject_consistency", "background_consistency"]),
                      extractors=Extractors(dino=dino, clip_b32=clip))
    assert (dino.calls, clip.calls) == (0, 3) and set(both.aggregate) == {"subject_consistency", "background_consistency"}

    (weights / WEIGHT_FILES["dino"].relative_path).write_bytes(b"other weights")
    with pytest.raises(RunMismatchError, match=r"(?s)subject_consistency\.jsonl was measured with other settings.*"
                                               r"dino_model/dino_vitbase16_pretrain\.pth"):
        run_vbench(config(clips, weights, output, dimensions=["subject_consistency"]), extractors=Extractors(dino=encoder()))


def test_an_index_file_lists_the_videos(clips, weights, tmp_path):
    """`tune sample`'s index.csv: files relative to the index, a video named twice is measured once."""
    index = tmp_path / "index.csv"
    shutil.copy(clips / "cut.mp4", tmp_path / "cut.mp4")
    index.write_text("prompt,file,seed\na cut,cut.mp4,0\nagain,cut.mp4,1\n")
    result = run_vbench(config(index, weights, tmp_path / "out", dimensions=["temporal_flickering"]),
                        extractors=Extractors())
    assert list(result.per_video) == [str((tmp_path / "cut.mp4").resolve())]
    index.write_text("prompt,file\na,cut.mp4\nb,missing.mp4\nc,\n")
    with pytest.raises(DataError, match=r"line 3: video file .*missing\.mp4 does not exist; line 4: column 'file' is empty"):
        run_vbench(config(index, weights, tmp_path / "out", dimensions=["temporal_flickering"]))


def test_official_backend_goes_through_the_same_aggregates(clips, weights, tmp_path, monkeypatch):
    """The official backend (a subprocess with the vbench package, absent here) hands back per-video numbers;
    the consistency aggregate weighs them by frames − 1 as our decoder counts them: (6−1)·0.5 + (8−1)·1 +
    (8−1)·1 over 19."""
    calls = {}

    def run_official(videos, weights_dir, dimensions, output_dir, *, python):
        calls.update(videos=videos, output_dir=output_dir, python=python)
        return {str(video): {"subject_consistency": 0.5 if video.name == "static.mp4" else 1.0} for video in videos}

    monkeypatch.setattr(official, "run_official", run_official)
    monkeypatch.setenv("DESCORE_VBENCH_PYTHON", sys.executable)
    result = run_vbench(config(clips, weights, tmp_path / "official", backend="official",
                               dimensions=["subject_consistency"]))
    assert result.aggregate["subject_consistency"] == pytest.approx((2.5 + 7 + 7) / 19, abs=1e-12)
    assert calls["python"] == sys.executable and calls["output_dir"] == tmp_path / "official" / "official"
    with pytest.raises(RunMismatchError, match="different configuration"):
        run_vbench(config(clips, weights, tmp_path / "official", dimensions=["subject_consistency"]),
                   extractors=Extractors(dino=encoder()))


@pytest.mark.parametrize("overrides, message", [
    ({"dimensions": ["motion_smoothness"]}, "unknown VBench dimension.*motion_smoothness"),
    ({"dimensions": ["dynamic_degree", "dynamic_degree"]}, "names a dimension twice"),
    ({"dimensions": []}, "needs one or more"),
    ({"batch_size": 0}, "batch_size must be >= 1"),
    ({"backend": "pyiqa"}, "must be kit or official"),
    ({"official_python": "python3"}, "applies to --backend official only"),
    ({"weights": None}, "are required"),
])
def test_config_errors(tmp_path, overrides, message):
    values = {"videos": str(tmp_path), "weights": str(tmp_path), "output_dir": str(tmp_path / "out")} | overrides
    with pytest.raises(ConfigError, match=message):
        VBenchConfig(**values)


def test_official_backend_needs_an_interpreter(tmp_path, monkeypatch):
    monkeypatch.delenv("DESCORE_VBENCH_PYTHON", raising=False)
    with pytest.raises(ConfigError, match=r"needs VBench's interpreter: set official_python or DESCORE_VBENCH_PYTHON"):
        config(tmp_path, tmp_path, tmp_path / "out", backend="official")


def test_missing_inputs_are_named(clips, weights, tmp_path):
    with pytest.raises(ConfigError, match=r"no extractor for raft, which --dimensions dynamic_degree need"):
        run_vbench(config(clips, weights, tmp_path / "a", dimensions=["dynamic_degree"]), extractors=Extractors())
    (weights / WEIGHT_FILES["raft"].relative_path).unlink()
    with pytest.raises(ConfigError, match=r"lacks 1 file.*raft_model/models/raft-things\.pth \(download the zip"):
        run_vbench(config(clips, weights, tmp_path / "b", dimensions=["dynamic_degree"]),
                   extractors=Extractors(raft=ShiftFlow()))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no .mp4 file"):
        run_vbench(config(tmp_path / "empty", weights, tmp_path / "c"))
