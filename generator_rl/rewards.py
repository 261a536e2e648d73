"""Weighted mixes of reward models for the generator trainers, built from the reward registry.

A run's ``rewards`` is a list of terms, each a registry entry plus ``weight`` (and an optional ``label`` for
logging, default the name). In YAML::

    rewards:
      - {name: descore_no_cot, path: runs/descore/final, weight: 1.0}
      - {name: temporal_smoothness, weight: 0.1}

or on the command line ``--rewards name=brightness,weight=1.0 name=temporal_smoothness,weight=0.1``. The
total is Σ weight·reward; an item any term failed to score is NaN (and counted), never a made-up value.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from reward import RewardModel, VideoFrames, build_reward
from reward.errors import ConfigError


class RewardTerm:
    """One reward term: ``name`` (registry), ``weight``, optional ``label`` and the model's options."""

    def __init__(self, value: str | Mapping[str, Any]) -> None:
        entry = dict(value) if isinstance(value, Mapping) else _parse_term(value)
        if "name" not in entry:
            raise ConfigError(f"reward term {value!r} has no name")
        raw = entry.pop("weight", 1.0)
        try:
            if isinstance(raw, bool):
                raise TypeError
            self.weight = float(raw)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"reward term {value!r}: weight must be a number, got {raw!r}") from error
        if not math.isfinite(self.weight):
            raise ConfigError(f"reward term {value!r} has a non-finite weight ({raw!r})")
        self.label = str(entry.pop("label", entry["name"]))
        self.entry = entry

    def __repr__(self) -> str:
        return f"RewardTerm({self.entry | {'weight': self.weight, 'label': self.label}})"

    def to_dict(self) -> dict[str, Any]:
        return {**self.entry, "weight": self.weight, "label": self.label}


def _parse_term(text: str) -> dict[str, Any]:
    entry: dict[str, Any] = {}
    for part in filter(None, text.split(",")):
        key, sep, raw = part.partition("=")
        if not sep:
            raise ConfigError(f"reward term {text!r}: expected key=value pairs such as name=brightness,weight=1.0")
        entry[key.strip()] = _scalar(raw.strip())
    return entry


def _scalar(raw: str) -> Any:
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(raw.lower(), raw)


@dataclass(frozen=True)
class MixedRewards:
    total: torch.Tensor  # (N,) float32, NaN where any term failed
    terms: dict[str, torch.Tensor]  # label -> (N,)


class RewardMix:
    """Scores rollouts with every term and combines them."""

    def __init__(self, terms: Sequence[RewardTerm]) -> None:
        if not terms:
            raise ConfigError("at least one reward term is needed")
        labels = [term.label for term in terms]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"reward labels must be unique, got {labels}; set `label` on repeated rewards")
        self.terms = list(terms)
        self.models: list[RewardModel] = [build_reward(term.entry) for term in terms]

    def score(self, videos: Sequence[VideoFrames], prompts: Sequence[str]) -> MixedRewards:
        per_term = {term.label: model.score(videos, prompts).rewards for term, model in zip(self.terms, self.models)}
        total = sum(term.weight * per_term[term.label] for term in self.terms)
        return MixedRewards(total=total.float(), terms=per_term)


class InlineExecutor(Executor):
    """An executor that runs each call at once in the caller's thread (scoring without overlap)."""

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as error:  # delivered by future.result(), as a thread pool would
            future.set_exception(error)
        return future


def scoring_executor(overlap: bool) -> Executor:
    """Where reward calls run: one background thread when ``overlap`` (the reward of one batch is computed while
    the next batch samples; a single thread keeps the reward models' calls in order and off each other), else
    inline. Use it as a context manager: leaving it waits for the calls still running."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="reward") if overlap else InlineExecutor()
