"""The reward-model interface and registry.

Every reward model — DeScore with or without CoT, and later VideoAlign, VLM judges, composites, remote
clients — scores a batch of (video, prompt) and returns one :class:`ScoredItem` per input. A failure is
reported as such (``reward`` NaN, ``error`` set), never replaced by a made-up number. A registry maps a
config entry ``{"name": ..., "path": ..., **options}`` to an instance, so reward models are swapped from
YAML alone. A reward defined outside the ``reward`` package (which imports nothing above it) joins the registry
as a plugin: an entry point in the group ``descore.rewards`` whose import registers it, e.g. in a
``pyproject.toml``::

    [project.entry-points."descore.rewards"]
    vbench = "benchmarks.vbench.reward"

The first lookup of a name the registry lacks reads the declared plugins (so ``import reward`` stays cheap) and
imports the one of that name.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib.metadata import EntryPoint
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
PLUGIN_GROUP = "descore.rewards"
_plugins: dict[str, EntryPoint] | None = None  # declared plugins by name; None until first needed


def register_reward(name: str) -> Callable[[RewardFactory], RewardFactory]:
    """Class or factory decorator: make ``name`` resolvable by :func:`build_reward`."""

    def decorate(factory: RewardFactory) -> RewardFactory:
        if name in _REGISTRY:
            raise ValueError(f"reward model {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return decorate


def declare_reward_plugins(entry_points: Iterable[EntryPoint] | None = None) -> dict[str, EntryPoint]:
    """Declare the reward plugins: ``entry_points``, or (None) those the installed packages list under
    :data:`PLUGIN_GROUP`. Nothing is imported here; a plugin is imported when its name is first looked up.
    The lookup calls this once; call it yourself to declare plugins that are not installed (tests).

    Raises:
        ConfigError: two entry points declare one name with different modules.
    """
    global _plugins
    if entry_points is None:
        from importlib.metadata import entry_points as installed

        entry_points = installed(group=PLUGIN_GROUP)
    declared: dict[str, EntryPoint] = {}
    for entry_point in entry_points:
        other = declared.setdefault(entry_point.name, entry_point)
        if other.value != entry_point.value:
            raise ConfigError(f"reward plugin {entry_point.name!r} is declared twice under {PLUGIN_GROUP!r}: "
                              f"{other.value!r} and {entry_point.value!r}; uninstall one of them")
    _plugins = declared
    return dict(declared)


def _declared_plugins() -> dict[str, EntryPoint]:
    return declare_reward_plugins() if _plugins is None else _plugins


def registered_rewards() -> list[str]:
    """Every name :func:`build_reward` resolves: the registry and the declared plugins (not yet imported)."""
    return sorted(set(_REGISTRY) | set(_declared_plugins()))


def _factory(name: Any) -> RewardFactory:
    """The factory of ``name``, importing the plugin that declares it when the registry lacks it.

    Raises:
        ConfigError: the name is neither registered nor declared (the message lists those that are), or its
            plugin fails to import or does not register it.
    """
    plugins = _declared_plugins()
    if name not in _REGISTRY and isinstance(name, str) and name in plugins:
        entry_point = plugins[name]
        try:
            entry_point.load()
        except Exception as error:  # an import can raise anything; the user needs the plugin's name and module
            raise ConfigError(f"reward plugin {name!r} ({PLUGIN_GROUP} entry point {entry_point.value!r}) failed "
                              f"to import: {type(error).__name__}: {error}") from error
        if name not in _REGISTRY:
            raise ConfigError(f"reward plugin {name!r}: importing {entry_point.value!r} registered no reward of that "
                              "name (it must call register_reward with the entry point's name)")
    if name not in _REGISTRY:
        raise ConfigError(f"unknown reward model {name!r}; registered: {registered_rewards()}")
    return _REGISTRY[name]


def check_reward_entry(entry: Mapping[str, Any]) -> None:
    """Check a config entry without building the model: a registered name (a plugin's is imported now), options
    the model takes, and a ``path`` that exists (or is a hub id). Jobs call this before loading anything else,
    so a typo fails in a second instead of after the generator has loaded.

    Raises:
        ConfigError: unknown name (the message lists the registered ones), a plugin that fails to import,
            unknown options, or a missing path.
    """
    options = dict(entry)
    name = options.pop("name", None)
    calibration = options.pop("calibration", None)  # reserved for every model: read by build_reward
    factory = _factory(name)
    accepted = inspect.signature(factory).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise ConfigError(f"reward model {name!r} does not take options {unknown}; it takes {sorted(accepted)}")
    check_options = getattr(factory, "check_options", None)  # option values (composite, remote, vbench)
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
    model = _factory(options.pop("name"))(**options)
    calibration = entry_calibration(entry)
    if calibration is not None or not hasattr(model, "calibration"):
        model.calibration = calibration
    return model
