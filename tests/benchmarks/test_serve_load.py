"""The reward-server load benchmark (benchmarks/serve_load.py) runs end to end against real server processes on
the brightness reward, so its numbers come from a working harness: every request of every cell is accounted
for, and the throughput is the videos scored over the cell's wall time."""

from __future__ import annotations

import json

import pytest

from benchmarks.serve_load import ServeLoadConfig, main
from reward.errors import ConfigError


def _run(tmp_path, concurrency: list[int], batch_sizes: list[int], requests: int = 2) -> dict:
    out = tmp_path / "load.json"
    argv = ["--tiny", "--concurrency", *map(str, concurrency), "--batch_sizes", *map(str, batch_sizes),
            "--requests", str(requests), "--json_out", str(out)]
    assert main(argv) == 0
    return json.loads(out.read_text())


def _check_cells(report: dict, grid: list[tuple[int, int]], requests: int) -> None:
    assert report["reward"] == {"name": "brightness"}
    cells = report["cells"]
    assert [(cell["batch_size"], cell["concurrency"]) for cell in cells] == grid
    for cell in cells:
        assert cell["requests"] == cell["answered"] == cell["concurrency"] * requests
        assert (cell["status_429"], cell["errors"], cell["error_samples"]) == (0, 0, [])
        assert 0 < cell["latency_p50_ms"] <= cell["latency_p95_ms"]
        scored = cell["videos_per_s"] * cell["wall_s"]
        assert scored == pytest.approx(cell["requests"] * cell["batch_size"])


def test_a_one_cell_grid(tmp_path):
    _check_cells(_run(tmp_path, [1], [1], requests=3), [(1, 1)], requests=3)


@pytest.mark.slow
def test_a_two_by_two_grid_starts_one_server_per_batch_size(tmp_path):
    _check_cells(_run(tmp_path, [1, 2], [1, 2]), [(1, 1), (1, 2), (2, 1), (2, 2)], requests=2)


def test_settings_are_checked_before_anything_starts(tmp_path):
    with pytest.raises(ConfigError, match="either --reward or --tiny"):
        ServeLoadConfig(reward=str(tmp_path / "r.yaml"), tiny=True)
    with pytest.raises(ConfigError, match="--batch_sizes must list integers >= 1"):
        ServeLoadConfig(tiny=True, batch_sizes=[0])
    with pytest.raises(ConfigError, match="missing.yaml is not a file"):
        ServeLoadConfig(reward=str(tmp_path / "missing.yaml"))
