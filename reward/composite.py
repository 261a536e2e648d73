"""``composite``: a weighted sum of reward models, each term normalised first (docs/reward_zoo/composite.md).

    name: composite
    terms:
      - {name: descore_no_cot, path: runs/descore/final, weight: 1.0, normalize: zscore}
      - {name: temporal_smoothness, calibration: calib/smooth/calibration.json, weight: 0.5, normalize: zscore,
         label: smooth}
      - {name: brightness, weight: 0.1, normalize: rank}

A term is a registry entry (``name`` and the model's options, ``calibration`` included), plus ``weight``
(default 1.0), ``normalize`` (``none`` | ``zscore`` | ``rank``, default ``none``) and ``label`` (default the
name; labels must differ) — the vocabulary of a generator recipe's ``rewards:`` list. reward =
Σ weight · normalised term. ``zscore`` uses the term's calibration stats; ``rank`` ranks within the batch
being scored. A composite may be a term of another composite.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .base import RewardModel, RewardOutput, ScoredItem, build_reward, check_reward_entry, register_reward
from .errors import ConfigError
from .json_values import finite_or_none
from .video import VideoSource

NORMALIZATIONS = ("none", "zscore", "rank")
TERM_KEYS = ("weight", "normalize", "label")  # what a term adds to its reward's registry entry


def zscore(values: Sequence[float], *, mean: float, std: float) -> list[float]:
    """(x − mean) / std per value; NaN stays NaN."""
    return [(value - mean) / std for value in values]


def batch_rank(values: Sequence[float]) -> list[float]:
    """Each value's rank among the finite values of the batch, scaled to [0, 1]: (rank − 1) / (n − 1) with
    ranks 1..n from the lowest; tied values share the mean of their ranks; a lone finite value gets 0.5 (the
    middle: nothing to compare it with). Non-finite values stay NaN and are not ranked."""
    finite = sorted((value, index) for index, value in enumerate(values) if math.isfinite(value))
    ranks = [math.nan] * len(values)
    if len(finite) == 1:
        ranks[finite[0][1]] = 0.5
        return ranks
    start = 0
    while start < len(finite):
        end = start
        while end + 1 < len(finite) and finite[end + 1][0] == finite[start][0]:
            end += 1
        shared = (start + end) / 2  # mean of the 0-based ranks start..end
        for _, index in finite[start:end + 1]:
            ranks[index] = shared / (len(finite) - 1)
        start = end + 1
    return ranks


@dataclass(frozen=True)
class CompositeTerm:
    """One term: the registry ``entry`` of its reward, its ``weight``, ``normalize`` and ``label``."""

    entry: dict[str, Any]
    weight: float
    normalize: str
    label: str


def parse_terms(terms: Any) -> list[CompositeTerm]:
    """Check a composite's ``terms`` list (no model is built).

    Raises:
        ConfigError: not a non-empty list of mappings with a ``name``, a weight that is not a finite number,
            an unknown ``normalize``, or repeated labels; the message names the term.
    """
    if not isinstance(terms, list) or not terms:
        raise ConfigError(f"composite needs `terms`: a non-empty list of reward entries, got {terms!r}")
    parsed = []
    for position, term in enumerate(terms):
        if not isinstance(term, Mapping) or "name" not in term:
            raise ConfigError(f"composite term {position} must be a mapping with a name, got {term!r}")
        entry = {key: value for key, value in term.items() if key not in TERM_KEYS}
        label = str(term.get("label", term["name"]))
        weight, normalize = term.get("weight", 1.0), term.get("normalize", "none")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise ConfigError(f"composite term {label!r}: weight must be a finite number, got {weight!r}")
        if normalize not in NORMALIZATIONS:
            raise ConfigError(f"composite term {label!r}: normalize must be one of {', '.join(NORMALIZATIONS)}, "
                              f"got {normalize!r}")
        parsed.append(CompositeTerm(entry=entry, weight=float(weight), normalize=normalize, label=label))
    labels = [term.label for term in parsed]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ConfigError(f"composite terms share the label(s) {repeated}; give each a distinct `label`")
    return parsed


def _zscore_scale(term: CompositeTerm, model: RewardModel) -> tuple[float, float]:
    """(mean, std) of the term's reward from its calibration stats."""
    calibration = getattr(model, "calibration", None)
    if calibration is None:
        raise ConfigError(
            f"composite term {term.label!r} ({term.entry['name']}) has normalize: zscore but no calibration stats; "
            "add `calibration: path/to/calibration.json` (from `descore reward calibrate`) to the term"
        )
    stats = calibration.stats("reward")
    if not (math.isfinite(stats.std) and stats.std > 0):
        raise ConfigError(f"composite term {term.label!r}: its calibration std is {stats.std} over {stats.count} "
                          "value(s); z-scores need a positive std (calibrate on more, and more varied, videos)")
    return stats.mean, stats.std


@register_reward("composite")
class CompositeReward:
    """Σ weight · normalised reward over its terms (module docstring). ``sub_scores`` hold each term's value
    before and after normalisation as ``<label>/raw`` and ``<label>/normalized`` (None where the term failed).
    An item any term failed is NaN, its ``error`` naming each failed term."""

    name = "composite"

    def __init__(self, terms: list[Mapping[str, Any]]) -> None:
        self.terms = parse_terms(terms)
        self.models = [build_reward(term.entry) for term in self.terms]
        self.scales = {term.label: _zscore_scale(term, model)
                       for term, model in zip(self.terms, self.models) if term.normalize == "zscore"}

    @staticmethod
    def check_options(options: Mapping[str, Any]) -> None:
        """Check the terms' entries without building them (:func:`reward.base.check_reward_entry`)."""
        for term in parse_terms(options.get("terms")):
            check_reward_entry(term.entry)

    def score(self, videos: Sequence[VideoSource], prompts: Sequence[str]) -> RewardOutput:
        if len(videos) != len(prompts):
            raise ValueError(f"got {len(videos)} videos and {len(prompts)} prompts")
        per_term = {term.label: model.score(videos, prompts).items for term, model in zip(self.terms, self.models)}
        raw = {label: [item.reward if item.ok else math.nan for item in scored] for label, scored in per_term.items()}
        normalized = {term.label: self._normalize(term, raw[term.label]) for term in self.terms}
        combined = []
        for index in range(len(videos)):
            failures = [f"term {label!r}: {scored[index].error or 'no reward'}"
                        for label, scored in per_term.items() if not scored[index].ok]
            weighted = [term.weight * normalized[term.label][index] for term in self.terms]
            total = math.nan if failures else math.fsum(weighted)
            sub_scores = {}
            for label in per_term:
                sub_scores[f"{label}/raw"] = finite_or_none(raw[label][index])
                sub_scores[f"{label}/normalized"] = finite_or_none(normalized[label][index])
            combined.append(ScoredItem(reward=total, sub_scores=sub_scores, error="; ".join(failures) or None))
        return RewardOutput(combined)

    def _normalize(self, term: CompositeTerm, values: list[float]) -> list[float]:
        if term.normalize == "zscore":
            mean, std = self.scales[term.label]
            return zscore(values, mean=mean, std=std)
        if term.normalize == "rank":
            return batch_rank(values)
        return list(values)
