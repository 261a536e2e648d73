"""The reward-model interface and registry.

Every reward model — DeScore with or without CoT, and later VideoAlign, VLM judges, composites, remote
clients — scores a batch of (video, prompt) and returns one :class:`ScoredItem` per input. A failure is
reported as such (``reward`` NaN, ``error`` set), never replaced by a made-up number. A registry maps a
config entry ``{"name": ..., "path": ..., **options}`` to an instance, so reward models are swapped from
YAML alone.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

import torch
from tqdm.auto import tqdm

from .errors import ConfigError, VideoDecodeError
from .video import DecodeLimits, SampledVideo, VideoSource, VideoSpec, load_video

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoredItem:
    """One scored video: the reward (NaN when scoring failed) and what the model said about it.

    ``parse_ok`` is None when the model writes no structured answer (e.g. no-CoT mode). ``truncated`` is True
    when the model's CoT hit its token limit before it ended (scored all the same, and reported), None when no
    CoT was written.
    """

    reward: float
    cot: str | None = None
    sub_scores: dict[str, Any] | None = None
    overall_score: float | None = None
    parse_ok: bool | None = None
    parse_error: str | None = None
    error: str | None = None
    truncated: bool | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and math.isfinite(self.reward)


@dataclass(frozen=True)
class RewardOutput:
    items: list[ScoredItem]

    @property
    def rewards(self) -> torch.Tensor:
        """float32 rewards, NaN where an item failed."""
        return torch.tensor([item.reward for item in self.items], dtype=torch.float32)

    @property
    def failures(self) -> int:
        return sum(not item.ok for item in self.items)

    @property
    def parse_failure_rate(self) -> float:
        """Share of CoTs without a valid answer block among those that were parsed (NaN if none)."""
        parsed = [item.parse_ok for item in self.items if item.parse_ok is not None]
        return float("nan") if not parsed else sum(not ok for ok in parsed) / len(parsed)


@runtime_checkable
class RewardModel(Protocol):
    """Scores videos (paths or in-memory frames) against their prompts.

    :func:`build_reward` also gives every model a ``calibration`` attribute: the stats of its entry's
    ``calibration:`` file (:class:`reward.calibration.Calibration`), those a DeScore checkpoint carries, or None.
    """

    name: str

    def score(self, videos: Sequence[VideoSource], prompts: Sequence[str]) -> RewardOutput: ...


def sampled_batches(
    videos: Sequence[VideoSource],
    spec: VideoSpec,
    limits: DecodeLimits,
    *,
    batch_size: int,
    skip_invalid: bool,
    items: list[ScoredItem | None],
    progress: str | None = None,
) -> Iterator[list[tuple[int, SampledVideo]]]:
    """``videos`` sampled by ``spec``, ``batch_size`` at a time, as ``(index, clip)`` lists — decoded batch by
    batch, so a long list of clips never sits in memory at once.

    With ``skip_invalid`` a video that cannot be read becomes a failed item in ``items`` (NaN reward, its error)
    and is left out of its batch (a batch left empty is not yielded); otherwise its :class:`VideoDecodeError`
    propagates. ``progress`` is the description of a progress bar over batches (None: no bar).
    """
    for start in tqdm(range(0, len(videos), batch_size), desc=progress, disable=progress is None):
        loaded = []
        for index in range(start, min(start + batch_size, len(videos))):
            try:
                loaded.append((index, load_video(videos[index], spec, limits=limits)))
            except VideoDecodeError as error:
                if not skip_invalid:
                    raise
                logger.warning("skipping item %d: %s", index, error)
                items[index] = ScoredItem(reward=math.nan, error=str(error))
        if loaded:
            yield loaded


RewardFactory = Callable[..., RewardModel]
_REGISTRY: dict[str, RewardFactory] = {}


def register_reward(name: str) -> Callable[[RewardFactory], RewardFactory]:
    """Class or factory decorator: make ``name`` resolvable by :func:`build_reward`."""

    def decorate(factory: RewardFactory) -> RewardFactory:
        if name in _REGISTRY:
            raise ValueError(f"reward model {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return decorate


def registered_rewards() -> list[str]:
    return sorted(_REGISTRY)


def check_reward_entry(entry: Mapping[str, Any]) -> None:
    """Check a config entry without building the model: a registered name, options the model takes, and a
    ``path`` that exists (or is a hub id). Jobs call this before loading anything else, so a typo fails in a
    second instead of after the generator has loaded.

    Raises:
        ConfigError: unknown name (the message lists the registered ones), unknown options, or a missing path.
    """
    options = dict(entry)
    name = options.pop("name", None)
    calibration = options.pop("calibration", None)  # reserved for every model: read by build_reward
    if name not in _REGISTRY:
        raise ConfigError(f"unknown reward model {name!r}; registered: {registered_rewards()}")
    accepted = inspect.signature(_REGISTRY[name]).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise ConfigError(f"reward model {name!r} does not take options {unknown}; it takes {sorted(accepted)}")
    check_options = getattr(_REGISTRY[name], "check_options", None)  # a model that holds entries (composite)
    if check_options is not None:
        check_options(options)
    if options.get("path") is not None:
        from .run_record import check_model_source

        check_model_source(
            options["path"], what=f"reward model {name!r} path", ask_hub=True, revision=options.get("revision")
        )
    if calibration is not None:
        from .calibration import entry_calibration

        entry_calibration(entry)


def build_reward(entry: Mapping[str, Any]) -> RewardModel:
    """Instantiate a reward model from a config entry: ``{"name": ..., **options}``.

    The option ``calibration: path/to/calibration.json`` is taken by every model: the built model's
    ``calibration`` attribute holds those stats (they win over any a DeScore checkpoint carries), else what the
    model found itself, else None.

    Raises:
        ConfigError: as :func:`check_reward_entry`; a calibration file of another reward.
    """
    from .calibration import entry_calibration

    check_reward_entry(entry)
    options = dict(entry)
    options.pop("calibration", None)
    model = _REGISTRY[options.pop("name")](**options)
    calibration = entry_calibration(entry)
    if calibration is not None or not hasattr(model, "calibration"):
        model.calibration = calibration
    return model
