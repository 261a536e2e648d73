"""benchmarks/gpu/vbench_throughput.py runs every dimension at tiny sizes on CPU, so the script a lent GPU runs
at Wan's output size cannot rot between loans."""

from __future__ import annotations

import json

import pytest

from benchmarks.gpu.vbench_throughput import main
from benchmarks.vbench.metrics import DIMENSIONS
from reward.errors import ConfigError


@pytest.mark.slow
def test_every_dimension_is_measured_at_tiny_size(tmp_path):
    out = tmp_path / "vbench.json"
    assert main(["--tiny", "--device", "cpu", "--repeats", "1", "--json_out", str(out), "--scratch_dir", str(tmp_path)]) == 0
    report = json.loads(out.read_text())
    assert [m["dimension"] for m in report["measurements"]] == list(DIMENSIONS)
    assert all(m["status"] == "ok" and m["videos_per_s"] > 0 for m in report["measurements"])


def test_real_sizes_need_a_gpu():
    with pytest.raises(ConfigError, match="real sizes need a GPU"):
        main(["--device", "cpu"])
