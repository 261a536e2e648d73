"""The CoT benchmark scripts (benchmarks/gpu/cot_throughput.py, cot_parity.py) run their HF half at tiny size on
CPU, so what a lent GPU runs cannot rot between loans (the vLLM half needs vLLM and a GPU)."""

from __future__ import annotations

import json

import pytest

from benchmarks.gpu import cot_parity, cot_throughput
from reward.errors import ConfigError


def test_throughput_runs_the_hf_half_on_cpu(tmp_path):
    out = tmp_path / "throughput.json"
    assert cot_throughput.main(["--tiny", "--device", "cpu", "--backends", "hf", "--json_out", str(out),
                                "--scratch_dir", str(tmp_path)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["backend"] == "hf" and row["videos"] == 2 and row["collect_videos_per_s"] > 0
    assert row["generated_tokens"] == 16 and row["truncated"] == 2  # 8 tokens each, no end token from random weights


@pytest.mark.slow
def test_parity_runs_hf_against_itself_on_cpu(tmp_path):
    out = tmp_path / "parity.json"
    assert cot_parity.main(["--tiny", "--device", "cpu", "--backends", "hf", "--json_out", str(out),
                            "--scratch_dir", str(tmp_path)]) == 0
    result = json.loads(out.read_text())
    assert result["prompt_tokens_match"] and result["cot_agreement"] == 1.0
    assert result["first_difference"] == [None, None] and result["max_abs_reward_difference"] == 0.0


def test_first_difference():
    assert cot_parity.first_difference((1, 2, 3), (1, 2, 3)) is None
    assert cot_parity.first_difference((1, 2, 3), (1, 5, 3)) == 1
    assert cot_parity.first_difference((1, 2), (1, 2, 3)) == 2


def test_real_size_needs_a_gpu_and_known_backends():
    with pytest.raises(ConfigError, match="needs a GPU"):
        cot_throughput.main(["--device", "cpu"])
    with pytest.raises(ConfigError, match="unknown backends"):
        cot_throughput.main(["--tiny", "--device", "cpu", "--backends", "sglang"])
