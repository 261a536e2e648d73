"""`descore bench vbench` as a user runs it: random weights written in VBench's exact file layout, real mp4s,
every dimension through the real loaders (DINO, OpenAI CLIP archives, LAION head, MUSIQ, RAFT)."""

from __future__ import annotations

import json

import pytest

from benchmarks.vbench.metrics import DIMENSIONS
from benchmarks.vbench.weights import write_random_weights
from descore.cli import main

from .extractor_stubs import sliding_clip, static_clip, write_clip


def test_every_dimension_from_a_weights_folder_in_vbench_layout(tmp_path, capsys):
    videos = tmp_path / "videos"
    static = write_clip(videos / "a still texture-0.mp4", static_clip(9, height=128, width=160), 16.0)
    write_clip(videos / "a sliding texture-0.mp4", sliding_clip(9, step=8, height=128, width=160), 16.0)
    weights = write_random_weights(tmp_path / "weights", size="tiny")
    argv = ["bench", "vbench", "--videos", str(videos), "--weights", str(weights), "--output_dir", str(tmp_path / "out"),
            "--device", "cpu"]
    assert main(argv) == 0
    layout = json.loads((tmp_path / "out" / "out_eval_results.json").read_text())
    assert list(layout) == list(DIMENSIONS)
    still = {dimension: next(r["video_results"] for r in layout[dimension][1] if r["video_path"] == str(static.resolve()))
             for dimension in DIMENSIONS}
    # Identical frames: identical features whatever the (random) weights, and no flicker. (A random RAFT sees
    # motion anywhere: dynamic degree means something only with the real weights.)
    assert still["subject_consistency"] == still["background_consistency"] == still["temporal_flickering"] == 1.0
    assert isinstance(still["dynamic_degree"], bool) and 0 < still["imaging_quality"] < 100
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["weights"]["files"]["clip_model/ViT-B-32.pt"]["published"] is False  # random, and recorded so
    assert "not VBench's Quality" in results["partial_quality"]["label"]
    printed = capsys.readouterr().out

    assert main(argv) == 0  # everything cached: the same numbers again
    assert json.loads((tmp_path / "out" / "out_eval_results.json").read_text()) == layout
    assert capsys.readouterr().out == printed


def test_a_missing_weight_file_is_one_line_naming_it_and_its_source(tmp_path, capsys):
    videos = tmp_path / "videos"
    write_clip(videos / "a-0.mp4", static_clip(4, height=128, width=160), 16.0)
    assert main(["bench", "vbench", "--videos", str(videos), "--weights", str(tmp_path / "none"),
                 "--dimensions", "subject_consistency", "--output_dir", str(tmp_path / "out")]) == 2
    message = capsys.readouterr().err
    assert "dino_model/dino_vitbase16_pretrain.pth" in message and "dl.fbaipublicfiles.com" in message
    assert "Traceback" not in message


@pytest.mark.parametrize("dimension", ["imaging_quality"])
def test_one_dimension_alone(dimension, tmp_path):
    videos = tmp_path / "videos"
    write_clip(videos / "a-0.mp4", static_clip(4, height=128, width=160), 16.0)
    weights = write_random_weights(tmp_path / "weights", size="tiny")
    assert main(["bench", "vbench", "--videos", str(videos), "--weights", str(weights), "--dimensions", dimension,
                 "--output_dir", str(tmp_path / "out"), "--device", "cpu"]) == 0
    assert list(json.loads((tmp_path / "out" / "out_eval_results.json").read_text())) == [dimension]
