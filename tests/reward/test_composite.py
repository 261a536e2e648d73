"""`composite` (`reward/composite.py`): the normalisations against hand computations and an independent
rank formula, the weighted sum on real mp4s against its terms scored alone, z-scores from a calibration
written by `descore reward calibrate`, a failed item naming its terms, nesting, and the entry errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from reward import build_reward
from reward.base import check_reward_entry
from reward.calibrate_job import CalibrateConfig, run_calibrate
from reward.calibration import CALIBRATION_FILE, Calibration, DimensionStats, write_calibration
from reward.composite import CompositeReward, batch_rank, zscore
from reward.errors import ConfigError
from reward.jobs import ScoreConfig, run_score

from .helpers import small_clip, truncated_clip
from .test_calibration import write_index

NAN = math.nan


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("composite")
    return [str(small_clip(folder / f"{i}.mp4", seed=i, frames=6 + i)) for i in range(4)]


def alone(name: str, videos: list[str]) -> list[float]:
    return [item.reward for item in build_reward({"name": name}).score(videos, ["p"] * len(videos)).items]


def independent_rank(values: list[float]) -> list[float]:
    """(number below + (number equal − 1) / 2) / (n − 1) over the finite values: the mean 0-based rank of
    the value's tie group, scaled."""
    finite = [v for v in values if math.isfinite(v)]
    if len(finite) == 1:
        return [0.5 if math.isfinite(v) else NAN for v in values]
    return [(sum(u < v for u in finite) + (sum(u == v for u in finite) - 1) / 2) / (len(finite) - 1)
            if math.isfinite(v) else NAN for v in values]


# ----- the normalisations ---------------------------------------------------------------------------------------


def test_rank_within_the_batch_with_ties_and_failures():
    """[3, 1, 3, 2, NaN]: ranks 0-based 1 -> value 1, 2 -> value 2, the two 3s share (2 + 3) / 2 = 2.5;
    scaled by n − 1 = 3: [5/6, 0, 5/6, 1/3, NaN]."""
    assert batch_rank([3.0, 1.0, 3.0, 2.0, NAN]) == pytest.approx([5 / 6, 0.0, 5 / 6, 1 / 3, NAN], nan_ok=True)
    assert batch_rank([7.0]) == [0.5] and batch_rank([NAN, 2.0]) == pytest.approx([NAN, 0.5], nan_ok=True)
    assert batch_rank([4.0, 4.0, 4.0]) == [0.5, 0.5, 0.5] and batch_rank([]) == []
    generator = np.random.default_rng(0)
    for _ in range(200):
        values = generator.integers(0, 5, size=generator.integers(1, 9)).astype(float).tolist()
        values = [NAN if generator.random() < 0.15 else v for v in values]
        assert batch_rank(values) == pytest.approx(independent_rank(values), nan_ok=True, abs=1e-12)


def test_zscore_is_distance_from_the_mean_in_stds():
    assert zscore([1.0, 4.0, NAN], mean=2.0, std=0.5) == pytest.approx([-2.0, 4.0, NAN], nan_ok=True)


# ----- the composite ----------------------------------------------------------------------------------------------


def test_weighted_sum_of_raw_and_ranked_terms(clips):
    composite = build_reward({"name": "composite", "terms": [
        {"name": "brightness", "weight": 2.0},
        {"name": "temporal_smoothness", "weight": 0.5, "normalize": "rank", "label": "smooth"},
    ]})
    assert isinstance(composite, CompositeReward) and composite.calibration is None
    items = composite.score(clips, ["p"] * 4).items
    bright, smooth = alone("brightness", clips), alone("temporal_smoothness", clips)
    ranks = independent_rank(smooth)
    assert [item.reward for item in items] == pytest.approx([2 * b + 0.5 * r for b, r in zip(bright, ranks)], abs=1e-12)
    assert items[0].sub_scores == pytest.approx({"brightness/raw": bright[0], "brightness/normalized": bright[0],
                                                 "smooth/raw": smooth[0], "smooth/normalized": ranks[0]})
    assert all(item.ok for item in items)


def test_zscore_from_a_calibration_and_a_failed_item_naming_its_terms(clips, tmp_path):
    """Calibrate temporal_smoothness on the four clips with the job; the composite's z-scores use those stats.
    A corrupt clip fails in both terms: its reward is NaN and the error names each term."""
    index = write_index(tmp_path, [Path(clip) for clip in clips])
    (tmp_path / "smooth.yaml").write_text("name: temporal_smoothness\nskip_invalid: true\n")
    summary = run_calibrate(CalibrateConfig(reward=str(tmp_path / "smooth.yaml"), data=str(index),
                                            output_dir=str(tmp_path / "calib")))
    smooth = alone("temporal_smoothness", clips)
    mean, std = float(np.mean(smooth)), float(np.std(smooth, ddof=1))
    assert (summary.calibration.stats().mean, summary.calibration.stats().std) == pytest.approx((mean, std), abs=1e-12)

    corrupt = str(truncated_clip(tmp_path / "corrupt.mp4"))
    composite = build_reward({"name": "composite", "terms": [
        {"name": "temporal_smoothness", "skip_invalid": True, "calibration": str(tmp_path / "calib" / CALIBRATION_FILE),
         "normalize": "zscore", "weight": 3.0, "label": "smooth"},
        {"name": "brightness", "skip_invalid": True, "normalize": "rank", "weight": -1.0},
    ]})
    items = composite.score([*clips, corrupt], ["p"] * 5).items
    ranks = independent_rank(alone("brightness", clips))
    expected = [3.0 * (s - mean) / std - r for s, r in zip(smooth, ranks)]
    assert [item.reward for item in items[:4]] == pytest.approx(expected, abs=1e-9)
    assert items[1].sub_scores["smooth/normalized"] == pytest.approx((smooth[1] - mean) / std, abs=1e-9)
    failed = items[4]
    assert math.isnan(failed.reward) and not failed.ok
    assert failed.error.startswith("term 'smooth': cannot read video") and "; term 'brightness': cannot read video" in failed.error
    assert failed.sub_scores == {"smooth/raw": None, "smooth/normalized": None, "brightness/raw": None,
                                 "brightness/normalized": None}


def test_a_composite_may_be_a_term_of_another(clips):
    inner = {"name": "composite", "terms": [{"name": "brightness", "weight": 2.0}], "weight": 0.5, "label": "inner"}
    outer = build_reward({"name": "composite", "terms": [inner, {"name": "temporal_smoothness", "weight": -1.0}]})
    expected = [0.5 * 2.0 * b - s for b, s in zip(alone("brightness", clips), alone("temporal_smoothness", clips))]
    assert [item.reward for item in outer.score(clips, ["p"] * 4).items] == pytest.approx(expected, abs=1e-12)


def test_reward_score_writes_each_terms_values(clips, tmp_path):
    """From a --reward YAML through `reward score`: the record keeps the composite's sub-scores."""
    (tmp_path / "mix.yaml").write_text(
        "name: composite\nterms:\n  - {name: brightness}\n  - {name: temporal_smoothness, normalize: rank, label: smooth}\n")
    run_score(ScoreConfig(reward=str(tmp_path / "mix.yaml"), video=clips[:2], prompt=["p"],
                          output=str(tmp_path / "scores.jsonl")))
    records = [json.loads(line) for line in (tmp_path / "scores.jsonl").read_text().splitlines()]
    assert [sorted(record["sub_scores"]) for record in records] == [
        ["brightness/normalized", "brightness/raw", "smooth/normalized", "smooth/raw"]] * 2
    assert sorted(record["sub_scores"]["smooth/normalized"] for record in records) == [0.0, 1.0]


# ----- errors -----------------------------------------------------------------------------------------------------


def single_value_calibration(folder: Path) -> Path:
    stats = DimensionStats.of([0.3])
    identity = {"entry": {"name": "brightness"}, "fingerprint": None}
    return write_calibration(folder / CALIBRATION_FILE, Calibration(
        {"reward": stats}, {"label": "brightness", "entry": {"name": "brightness"}, "identity": identity}, {"data": {}}))


@pytest.mark.parametrize("terms, message", [
    ([], r"composite needs `terms`: a non-empty list of reward entries, got \[\]"),
    (None, r"composite needs `terms`"),
    ([["brightness"]], r"composite term 0 must be a mapping with a name"),
    ([{"name": "brightness", "normalize": "minmax"}],
     r"composite term 'brightness': normalize must be one of none, zscore, rank, got 'minmax'"),
    ([{"name": "brightness", "weight": "heavy"}], r"composite term 'brightness': weight must be a finite number"),
    ([{"name": "brightness"}, {"name": "brightness"}], r"composite terms share the label\(s\) \['brightness'\]"),
    ([{"name": "brightnes"}], r"unknown reward model 'brightnes'; registered: \["),
    ([{"name": "brightness", "gain": 2}], r"reward model 'brightness' does not take options \['gain'\]"),
    ([{"name": "brightness", "normalize": "zscore", "label": "bright"}],
     r"composite term 'bright' \(brightness\) has normalize: zscore but no calibration stats; add `calibration:"),
])
def test_bad_terms_are_refused_naming_the_term(terms, message):
    entry = {"name": "composite"} if terms is None else {"name": "composite", "terms": terms}
    with pytest.raises(ConfigError, match=message):
        build_reward(entry)


def test_bad_terms_are_found_without_building(tmp_path):
    """`check_reward_entry` (what jobs call before loading anything) looks into the terms."""
    with pytest.raises(ConfigError, match=r"calibration file .*nowhere.json does not exist"):
        check_reward_entry({"name": "composite", "terms": [{"name": "brightness", "calibration": str(tmp_path / "nowhere.json")}]})
    path = single_value_calibration(tmp_path)
    with pytest.raises(ConfigError, match=r"composite term 'brightness': its calibration std is nan over 1 value\(s\)"):
        build_reward({"name": "composite", "terms": [{"name": "brightness", "calibration": str(path), "normalize": "zscore"}]})
