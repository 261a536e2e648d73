"""From per-video numbers to VBench's aggregates, normalised scores, a partial quality score and its JSON.

Aggregates (single-process VBench, Vchitect/VBench commit 45e79ec):

* subject and background consistency: frame-weighted, Σ_videos Σ_i s_i / Σ_videos (T_v − 1) — a long clip
  weighs more; equal to the mean of the per-video values only when every clip has as many frames;
* imaging quality: the mean of the per-video MOS, divided by 100 (per video it stays 0..100);
* aesthetic quality, dynamic degree (the fraction of dynamic videos), temporal flickering: the mean over videos.

Normalisation follows VBench's ``scripts/constant.py``: n = (x − Min)/(Max − Min) per dimension. VBench's
Quality score averages seven normalised dimensions, dynamic degree at weight 0.5, over Σ weights = 6.5; we
have at most six of them (motion smoothness is not implemented), so Quality is undefined and we never report
it. :func:`partial_quality` is the same weighted mean over the dimensions present, named as partial
everywhere; it is not comparable with VBench's Quality.

``{name}_eval_results.json`` has VBench's layout, ``{dimension: [aggregate, [{"video_path": ...,
"video_results": ...}, ...]]}``, so VBench's ``scripts/cal_final_score.py`` reads it (element 0 of each entry).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .metrics import DIMENSIONS, VideoScore, check_dimensions

CONSISTENCY = ("subject_consistency", "background_consistency")
MOS_SCALE = 100.0  # imaging quality: MUSIQ's MOS is 0..100 per video, 0..1 aggregated

# (Min, Max) of VBench's normalisation, for the dimensions implemented here.
NORMALIZATION: dict[str, tuple[float, float]] = {
    "subject_consistency": (0.1462, 1.0),
    "background_consistency": (0.2615, 1.0),
    "temporal_flickering": (0.6293, 1.0),
    "aesthetic_quality": (0.0, 1.0),
    "imaging_quality": (0.0, 1.0),
    "dynamic_degree": (0.0, 1.0),
}
# Weights in VBench's Quality score (every other quality dimension weighs 1).
QUALITY_WEIGHTS: dict[str, float] = {"dynamic_degree": 0.5}
# VBench's seven quality dimensions; the partial score names how many of them it covers.
VBENCH_QUALITY_DIMENSIONS = (*DIMENSIONS, "motion_smoothness")
PARTIAL_QUALITY_LABEL = "partial quality ({count} of VBench's {total} quality dimensions; not VBench's Quality score)"


def aggregate(dimension: str, scores: Sequence[VideoScore]) -> float:
    """VBench's aggregate of one dimension over one or more videos (module docstring)."""
    check_dimensions([dimension])
    if not scores:
        raise ValueError(f"{dimension}: no video to aggregate")
    if dimension in CONSISTENCY:
        return sum(score.similarity_sum for score in scores) / sum(score.pairs for score in scores)
    mean = sum(score.value for score in scores) / len(scores)
    return mean / MOS_SCALE if dimension == "imaging_quality" else mean


def normalized(dimension: str, value: float) -> float:
    """(value − Min)/(Max − Min) with VBench's constants (:data:`NORMALIZATION`). VBench's
    ``cal_final_score.py`` also multiplies by the dimension's weight here (dynamic degree ×0.5); we keep the
    weight out, so a normalised dynamic degree is still the fraction of dynamic videos, and apply it in
    :func:`partial_quality` only."""
    low, high = NORMALIZATION[dimension]
    return (value - low) / (high - low)


def partial_quality(normalized_scores: Mapping[str, float]) -> float | None:
    """Σ w_d·n_d / Σ w_d over the dimensions given (dynamic degree w = 0.5, others 1); None for none. Not
    VBench's Quality score: that needs all seven quality dimensions (:func:`partial_quality_label`)."""
    if not normalized_scores:
        return None
    weights = {name: QUALITY_WEIGHTS.get(name, 1.0) for name in normalized_scores}
    return sum(weights[name] * value for name, value in normalized_scores.items()) / sum(weights.values())


def partial_quality_label(dimensions: Sequence[str]) -> str:
    return PARTIAL_QUALITY_LABEL.format(count=len(dimensions), total=len(VBENCH_QUALITY_DIMENSIONS))


def video_entry(dimension: str, video: str, score: VideoScore) -> dict[str, Any]:
    """One per-video record as VBench writes it: dynamic degree as a bool, imaging quality as the raw MOS;
    background consistency adds its similarity sum and pair count (``video_sim``, ``cnt_per_video``)."""
    value: Any = bool(score.value) if dimension == "dynamic_degree" else score.value
    entry = {"video_path": video, "video_results": value}
    if dimension == "background_consistency":
        entry |= {"video_sim": score.similarity_sum, "cnt_per_video": score.pairs}
    return entry


def eval_results(
    aggregates: Mapping[str, float], per_video: Mapping[str, Mapping[str, VideoScore]]
) -> dict[str, list[Any]]:
    """``{dimension: [aggregate, [per-video record, ...]]}``, VBench's ``*_eval_results.json`` layout."""
    return {
        dimension: [aggregates[dimension], [video_entry(dimension, video, score) for video, score in scores.items()]]
        for dimension, scores in per_video.items()
    }
