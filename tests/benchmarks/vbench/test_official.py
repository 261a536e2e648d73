"""The official VBench backend: interpreter resolution, weight layout, the driver's contract, and (with VBench's
own venv, ``DESCORE_VBENCH_PYTHON``) a real end-to-end run of ``vbench`` 0.1.5 on two generated mp4s."""

from __future__ import annotations

import ast
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from benchmarks.synthetic import square_clip
from benchmarks.vbench import official_driver
from benchmarks.vbench.official import (
    DRIVER,
    PYTHON_VARIABLE,
    RESULTS_FILE,
    check_complete,
    dimension_files,
    official_python,
    run_official,
    weight_links,
)
from benchmarks.vbench.metrics import DIMENSIONS
from benchmarks.vbench.parity import TOLERANCES, compare_backends, format_report, main
from reward.errors import ConfigError, DataError, VideoDecodeError
from reward.video import write_video

OFFICIAL_PYTHON = os.environ.get(PYTHON_VARIABLE)
needs_official = pytest.mark.skipif(not OFFICIAL_PYTHON, reason=f"{PYTHON_VARIABLE} (VBench's own venv) is not set")


def make_videos(folder: Path) -> list[Path]:
    """Two 4-frame 64x64 clips at 8 fps (dynamic_degree keeps every frame) that move and flicker differently."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    return [
        write_video(folder / "a cat-0.mp4", square_clip(rng, colour="red", direction="left", noise=2.0, frames=4), 8.0),
        write_video(folder / "b.mp4", square_clip(rng, colour="blue", direction="right", noise=20.0, frames=4), 8.0),
    ]


def flickering(video: Path) -> float:
    """VBench's temporal_flickering, computed here: 1 - mean |frame_t - frame_t+1| / 255 over all pixels."""
    with av.open(str(video)) as container:
        frames = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]).astype(np.float64)
    return (255.0 - np.abs(np.diff(frames, axis=0)).mean()) / 255.0


def empty_weights(folder: Path, dimensions) -> Path:
    for dimension in dimensions:
        for relative in dimension_files(dimension):
            (folder / relative).parent.mkdir(parents=True, exist_ok=True)
            (folder / relative).write_bytes(b"")
    return folder


# ---- interpreter, inputs, layout (no VBench venv needed) -------------------------------------------------------


def test_interpreter_comes_from_config_then_environment(tmp_path):
    assert official_python(sys.executable, {PYTHON_VARIABLE: "/nowhere/python"}) == sys.executable
    assert official_python(None, {PYTHON_VARIABLE: sys.executable}) == sys.executable
    with pytest.raises(ConfigError, match=f"set official_python or {PYTHON_VARIABLE}"):
        official_python(None, {})
    with pytest.raises(ConfigError, match="not an executable file"):
        official_python(str(tmp_path / "missing-python"), {})
    with pytest.raises(ConfigError, match="not an executable file"):
        official_python(str(tmp_path), {})


def test_an_interpreter_without_vbench_is_a_config_error(tmp_path):
    """The kit's own interpreter has no vbench: the driver says so and the caller raises a ConfigError."""
    videos = make_videos(tmp_path / "videos")
    with pytest.raises(ConfigError, match=r"cannot import vbench[\s\S]*No module named 'vbench'"):
        run_official(videos, tmp_path / "weights", ["temporal_flickering"], tmp_path / "out", python=sys.executable)
    assert json.loads((tmp_path / "out" / "request.json").read_text())["videos"] == [str(v) for v in videos]


def test_missing_weights_unknown_dimensions_and_bad_videos_fail_before_running(tmp_path):
    videos = make_videos(tmp_path / "videos")
    weights = empty_weights(tmp_path / "weights", ["subject_consistency"])
    with pytest.raises(ConfigError, match=r"weights/raft_model/models/raft-things.pth is missing"):
        run_official(videos, weights, ["subject_consistency", "dynamic_degree"], tmp_path / "out",
                     python=sys.executable)
    with pytest.raises(ConfigError, match=r"no dimension \['motion_smoothness'\]"):
        run_official(videos, weights, ["motion_smoothness"], tmp_path / "out", python=sys.executable)
    (tmp_path / "clip.avi").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"reads only .mp4/.gif files.*clip.avi"):
        run_official([tmp_path / "clip.avi"], weights, ["subject_consistency"], tmp_path / "out", python=sys.executable)
    with pytest.raises(ConfigError, match="got no videos"):
        run_official([], weights, ["subject_consistency"], tmp_path / "out", python=sys.executable)
    with pytest.raises(VideoDecodeError, match="gone.mp4: no such file"):
        run_official([tmp_path / "gone.mp4"], weights, ["subject_consistency"], tmp_path / "out", python=sys.executable)
    assert not (tmp_path / "out").exists()


def test_weight_links_follow_vbench_cache_and_dino_hub_layout(tmp_path):
    weights = empty_weights(tmp_path, DIMENSIONS)
    cache, torch_home = weight_links(weights, ["subject_consistency", "imaging_quality"])
    assert cache == {
        "dino_model/dino_vitbase16_pretrain.pth": str(weights / "dino_model/dino_vitbase16_pretrain.pth"),
        "pyiqa_model/musiq_spaq_ckpt-358bb6af.pth": str(weights / "pyiqa_model/musiq_spaq_ckpt-358bb6af.pth"),
    }
    assert torch_home == {official_driver.DINO_WEIGHTS: cache["dino_model/dino_vitbase16_pretrain.pth"]}
    assert weight_links(weights, ["temporal_flickering"]) == ({}, {})
    (weights / "dino_model/facebookresearch_dino_main").mkdir()
    (weights / "dino_model/facebookresearch_dino_main/hubconf.py").write_text("")
    cache, _ = weight_links(weights, ["subject_consistency"])
    assert cache["dino_model/facebookresearch_dino_main"] == str(weights / "dino_model/facebookresearch_dino_main")


def test_driver_reads_vbench_records_back_to_the_callers_paths():
    names = {"/tmp/x/000000_a.mp4": "/data/a.mp4", "/tmp/x/000001_a.mp4": "/other/a.mp4"}
    eval_results = {
        "dynamic_degree": [0.5, [{"video_path": "/tmp/x/000000_a.mp4", "video_results": True},
                                 {"video_path": "/tmp/x/000001_a.mp4", "video_results": False}]],
        "imaging_quality": [0.41, [{"video_path": "/tmp/x/000001_a.mp4", "video_results": 41.0}]],
    }
    assert official_driver.per_video_results(eval_results, names) == {
        "/data/a.mp4": {"dynamic_degree": 1.0}, "/other/a.mp4": {"dynamic_degree": 0.0, "imaging_quality": 41.0}}
    with pytest.raises(RuntimeError, match=r"1 \(video, dimension\) pairs.*/data/a.mp4: imaging_quality"):
        check_complete(official_driver.per_video_results(eval_results, names), list(names.values()),
                       ["dynamic_degree", "imaging_quality"], Path("results.json"))


def test_driver_imports_nothing_of_the_kit():
    """It runs in VBench's interpreter, where the kit is not installed."""
    tree = ast.parse(DRIVER.read_text())
    roots = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
             for alias in node.names}
    roots |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert roots <= {"__future__", "json", "math", "os", "sys", "tempfile", "importlib", "pathlib", "torch", "timm",
                     "vbench", "pyiqa"}


def test_dino_stand_in_is_timms_vit_at_the_training_size_and_keeps_dinos_grid_elsewhere(tmp_path):
    """At 224 px the stand-in must equal timm's own forward (same modules, no interpolation); at other sizes the
    position table is resampled to the patch grid, the CLS row untouched and a constant table still constant."""
    torch = pytest.importorskip("torch")
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(patch_size=16, embed_dim=64, depth=2, num_heads=1, num_classes=0).eval()
    torch.save(vit.state_dict(), tmp_path / "dino.pth")
    dino = official_driver.dino_from_timm(tmp_path / "dino.pth")
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(dino(images), vit(images), rtol=0, atol=1e-6)
        assert dino(torch.randn(2, 3, 224, 392)).shape == (2, 64)  # 392 = 24 patches + 8 dropped pixels
    table = torch.randn(1, 1 + 14 * 14, 8)
    resampled = official_driver.dino_position_embedding(table, 14, 24)
    assert resampled.shape == (1, 1 + 14 * 24, 8) and torch.equal(resampled[:, 0], table[:, 0])
    assert official_driver.dino_position_embedding(table, 14, 14) is table
    constant = torch.full((1, 1 + 14 * 14, 8), 0.25)
    torch.testing.assert_close(official_driver.dino_position_embedding(constant, 9, 30), torch.full((1, 271, 8), 0.25))


# ---- parity comparison -------------------------------------------------------------------------------------------


def test_parity_reports_the_largest_difference_per_dimension():
    kit = {"/v/a.mp4": {"subject_consistency": 0.95, "dynamic_degree": 1.0},
           "/v/b.mp4": {"subject_consistency": 0.90, "dynamic_degree": 0.0}}
    official = {"/v/a.mp4": {"subject_consistency": 0.95003, "dynamic_degree": 1.0},
                "/v/b.mp4": {"subject_consistency": 0.90020, "dynamic_degree": 1.0}}
    report = compare_backends(kit, official, ["subject_consistency", "dynamic_degree"], TOLERANCES)
    subject, dynamic = report.dimensions
    assert subject.max_difference == pytest.approx(2.0e-4) and subject.worst_video == "/v/b.mp4"
    assert not subject.passed and subject.tolerance == 1e-4
    assert dynamic.max_difference == 1.0 and not dynamic.passed and not report.passed
    table = format_report(report)
    assert "| b.mp4 | subject_consistency | 0.900000 | 0.900200 | 2.00e-04 |" in table
    assert "| dynamic_degree | 1.00e+00 | 0e+00 | b.mp4 | FAIL |" in table
    loose = compare_backends(kit, official, ["subject_consistency"], {"subject_consistency": 3e-4})
    assert loose.passed


def test_parity_fails_on_nan_and_on_missing_videos():
    kit = {"/v/a.mp4": {"aesthetic_quality": math.nan}, "/v/b.mp4": {"aesthetic_quality": 0.5}}
    official = {"/v/a.mp4": {"aesthetic_quality": 0.5}, "/v/b.mp4": {"aesthetic_quality": 0.5}}
    (aesthetic,) = compare_backends(kit, official, ["aesthetic_quality"], TOLERANCES).dimensions
    assert math.isnan(aesthetic.max_difference) and aesthetic.worst_video == "/v/a.mp4" and not aesthetic.passed
    with pytest.raises(DataError, match=r"only kit \['/v/b.mp4'\]"):
        compare_backends(kit, {"/v/a.mp4": official["/v/a.mp4"]}, ["aesthetic_quality"], TOLERANCES)
    with pytest.raises(DataError, match=r"imaging_quality: no value from one backend for \['/v/a.mp4', '/v/b.mp4'\]"):
        compare_backends(kit, official, ["imaging_quality"], TOLERANCES)


def test_parity_script_rejects_unknown_dimensions_and_malformed_tolerances(tmp_path, capsys):
    base = ["--videos", str(tmp_path), "--weights", str(tmp_path), "--output_dir", str(tmp_path / "out")]
    assert main([*base, "--dimensions", "subject_consistency", "motion_smoothness"]) == 2
    assert "unknown dimension(s) ['motion_smoothness']" in capsys.readouterr().err
    assert main([*base, "--tolerance", "dynamic_degre=0.5"]) == 2
    assert "unknown dimension(s) ['dynamic_degre']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--tolerance", "imaging_quality"])
    assert "--tolerance takes DIMENSION=VALUE, got 'imaging_quality'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ---- the real vbench package, in its own venv ------------------------------------------------------------------


@pytest.fixture(scope="module")
def official_weights(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("vbench_weights")
    helper = Path(__file__).with_name("official_weights.py")
    subprocess.run([OFFICIAL_PYTHON, "-I", str(helper), str(folder)], check=True, capture_output=True)
    return folder


@pytest.fixture(scope="module")
def official_run(official_weights, tmp_path_factory):
    folder = tmp_path_factory.mktemp("official")
    videos = make_videos(folder / "videos")
    per_video = run_official(videos, official_weights, DIMENSIONS, folder / "out", python=OFFICIAL_PYTHON,
                             device="cpu")
    return videos, per_video, folder / "out"


@pytest.mark.slow
@needs_official
def test_official_vbench_scores_every_dimension_per_video(official_run):
    videos, per_video, output = official_run
    assert list(per_video) == [str(video) for video in videos]
    for video in videos:
        values = per_video[str(video)]
        assert list(values) == list(DIMENSIONS)
        assert values["dynamic_degree"] in (0.0, 1.0)
        assert 0.0 <= values["subject_consistency"] <= 1.0 and 0.0 <= values["background_consistency"] <= 1.0
        assert values["temporal_flickering"] == pytest.approx(flickering(video), abs=1e-6)
    assert per_video[str(videos[0])]["temporal_flickering"] > per_video[str(videos[1])]["temporal_flickering"] + 0.01
    document = json.loads((output / RESULTS_FILE).read_text())
    assert document["versions"]["vbench"] == "0.1.5" and document["device"] == "cpu"
    assert document["dino"] == official_driver.DINO_STAND_IN
    eval_results = json.loads((output / "official_eval_results.json").read_text())
    assert eval_results["imaging_quality"][0] == pytest.approx(
        sum(per_video[str(video)]["imaging_quality"] for video in videos) / 2 / 100)


@needs_official
def test_official_temporal_flickering_matches_an_independent_computation(tmp_path):
    """The one dimension without weights: quick, and its value is computable here."""
    videos = make_videos(tmp_path / "videos")
    per_video = run_official(videos, tmp_path / "no_weights", ["temporal_flickering"], tmp_path / "out",
                             python=OFFICIAL_PYTHON, device="cpu")
    assert per_video == {str(video): {"temporal_flickering": pytest.approx(flickering(video), abs=1e-6)}
                         for video in videos}


@needs_official
def test_a_broken_weights_file_fails_with_the_log_tail(tmp_path):
    weights = empty_weights(tmp_path / "weights", ["background_consistency"])
    (weights / "clip_model/ViT-B-32.pt").write_bytes(b"not a TorchScript archive")
    with pytest.raises(RuntimeError, match=r"official VBench failed \(exit 1\); full log .*driver.log:\n[\s\S]*clip"):
        run_official(make_videos(tmp_path / "videos"), weights, ["background_consistency"], tmp_path / "out",
                     python=OFFICIAL_PYTHON, device="cpu")
