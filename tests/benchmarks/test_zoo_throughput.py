"""The zoo throughput script (benchmarks/gpu/zoo_throughput.py) runs every model end to end at tiny sizes on
CPU, so the script a lent GPU runs at real sizes cannot rot between loans."""

from __future__ import annotations

import json

import pytest

from benchmarks.gpu.zoo_throughput import MODELS, main
from reward.errors import ConfigError


def test_every_zoo_model_is_measured_at_tiny_size(tmp_path):
    out = tmp_path / "zoo.json"
    assert main(["--tiny", "--device", "cpu", "--batch_sizes", "1", "2", "--repeats", "1", "--json_out", str(out),
                 "--scratch_dir", str(tmp_path)]) == 0
    report = json.loads(out.read_text())
    assert report["errors"] == []
    assert [(m["model"], m["batch_size"]) for m in report["measurements"]] == [(n, b) for n in MODELS for b in (1, 2)]
    assert all(m["status"] == "ok" and m["videos_per_s"] > 0 for m in report["measurements"])


def test_real_sizes_need_a_gpu():
    with pytest.raises(ConfigError, match="real sizes need a GPU"):
        main(["--device", "cpu"])
    with pytest.raises(ConfigError, match="unknown models"):
        main(["--tiny", "--device", "cpu", "--models", "imagereward"])
