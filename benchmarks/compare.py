"""``descore bench compare``: the base Wan model against tuned LoRAs on one prompt suite, with uncertainty.

Steps (``docs/vbench/compare.md``):

1. **Prompt suite.** A prompt file, or VBench's per-dimension lists built from the ``vbench`` package's own
   ``VBench_full_info.json`` (the kit does not ship VBench's prompts): every prompt listed for one of
   ``prompt_dimensions``, once, in file order, written to ``<output_dir>/prompts.txt``.
2. **Sampling.** Every model — ``base`` (no LoRA) and each of ``loras`` — samples every prompt
   ``videos_per_prompt`` times through ``descore tune sample``'s own job (:func:`generator_rl.sample.run_sample`,
   VBench file names), into ``samples/<label>/``. Video k of prompt i starts from the noise of seed
   ``seed + 1000·i + k`` for every model, so the videos of a prompt are paired across models. Videos already on
   disk are kept: a killed comparison resumes where it stopped, and other sampling settings are refused. A
   ``best_of`` column (``base+best_of_N``) is the base model sampled with best-of-N test-time search by
   ``search_reward`` (:mod:`generator_rl.test_time`): same prompts, seeds (its candidate 0 is the base video) and
   metrics, so its deltas read like a LoRA's.
3. **Evaluation.** Every video is scored by each reward of ``rewards`` through ``descore reward score``'s job
   (cached in ``scores/<label>/<reward>.jsonl``, resumable), and by the VBench harness for
   ``vbench_dimensions`` (``vbench/<label>/``). With a VBench suite, a VBench dimension is measured on the
   prompts VBench lists for it (as VBench does); rewards on every prompt.
4. **Statistics** (:mod:`benchmarks.paired_stats`): per metric, each model's mean over prompts of its per-prompt
   means over seeds; tuned − base on the prompts both have, with a paired percentile-bootstrap 95% interval over
   prompts (fixed seed) and the win rate per prompt (a tie counts one half).
5. **Report** (:mod:`benchmarks.report`): ``report.md``, a self-contained ``report.html``, ``report.json`` with
   every number, the exact configs, the commit, the seeds and the library versions, and two PNG plots.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml

from generator_rl.config import PolicyConfig, read_prompts
from generator_rl.rewards import RewardTerm
from generator_rl.sample import INDEX, SEED_STRIDE, SampleConfig, Sampler, run_sample
from generator_rl.tiny_wan import resolve_prompt_file
from reward.base import check_reward_entry
from reward.checkpoint import atomic_file
from reward.errors import ConfigError, DataError
from reward.jobs import ScoreConfig, run_score
from reward.run_record import check_output_directory, check_same_run, resolved_config, write_run_config

from . import paired_stats
from .vbench.metrics import DIMENSIONS
from .report import Comparison, ReportFiles, write_report

logger = logging.getLogger(__name__)

JOB = "bench compare"
RUN_RECORD = "run_config.json"
BASE = "base"
# VBench's per-video imaging_quality is the MUSIQ score (0-100); its aggregate divides by 100. The report shows
# every dimension on its aggregate's scale.
VBENCH_PER_VIDEO_SCALE = {"imaging_quality": 0.01}
VBENCH_BACKENDS = ("kit", "official")
# Fields that may change when a comparison folder is run again: what is evaluated and how it is summarised,
# never what was sampled (a changed sampling would mix two samplings in one folder).
EVALUATION_FIELDS = ("loras", "labels", "rewards", "vbench_dimensions", "vbench_weights", "vbench_backend",
                     "batch_size", "device", "bootstrap_resamples", "bootstrap_seed", "grid_prompts", "output_dir",
                     "lora_rank", "lora_alpha", "lora_target_modules", "gradient_checkpointing", "vae_tiling",
                     "vae_slicing", "best_of", "search_reward")


@dataclass
class CompareConfig:
    """Which models, on which prompts, measured how, written where (the Wan settings are ``PolicyConfig``'s)."""

    prompts: str | None = field(
        default=None, metadata={"help": "Prompt file (.txt, or .csv with a 'prompt' column; tiny:prompts for the tiny "
                                        "models). Or give --vbench_prompts."})
    vbench_prompts: str | None = field(
        default=None, metadata={"help": "Path of VBench_full_info.json (shipped in the `vbench` package's folder): the "
                                        "suite is every prompt VBench lists for one of --prompt_dimensions."})
    prompt_dimensions: list[str] = field(
        default_factory=lambda: list(DIMENSIONS),
        metadata={"help": "With --vbench_prompts: the VBench dimensions whose prompt lists make the suite."})
    loras: list[str] | None = field(
        default=None, metadata={"help": "Tuned LoRA folders (diffusers format, e.g. runs/grpo/final), each compared "
                                        "with the base model."})
    labels: list[str] | None = field(
        default=None, metadata={"help": "A name per LoRA for the report and folders (default: the LoRA folder's name, "
                                        "or its parent's for .../final)."})
    best_of: list[int] = field(
        default_factory=list,
        metadata={"help": "Test-time scaling columns: per N, a model base+best_of_N — the base model, each video the "
                          "best of N candidates by --search_reward (`tune sample --best_of N`; docs/test_time_scaling.md)."})
    search_reward: str | None = field(
        default=None, metadata={"help": "With --best_of: the label of the reward among --rewards that picks the best "
                                        "candidate (its own delta is then in-sample: the column was selected by it)."})
    seed: int = field(default=0, metadata={"help": "Base seed: video k of prompt i uses seed + 1000·i + k, for every model."})
    videos_per_prompt: int = field(default=5, metadata={"help": "Videos (seeds) per prompt and model (VBench: 5)."})
    sampler: Sampler = field(default="pipeline", metadata={"help": "pipeline (diffusers' WanPipeline, what published "
                                                                   "numbers use) or euler_ode (the rollouts' ODE)."})
    lossless: bool = field(default=False, metadata={"help": "Encode the videos losslessly (exactly reproducible frames)."})
    rewards: list[RewardTerm] | None = field(
        default=None, metadata={"help": "Reward models that score every video (registry entries, optional label), "
                                        "e.g. name=descore_no_cot,path=runs/descore/final."})
    vbench_dimensions: list[str] = field(
        default_factory=lambda: list(DIMENSIONS),
        metadata={"help": f"VBench dimensions to measure ({', '.join(DIMENSIONS)}); `vbench_dimensions: []` in a recipe: rewards only."})
    vbench_weights: str | None = field(
        default=None, metadata={"help": "Folder of the VBench weights in VBench's cache layout (docs/vbench/)."})
    vbench_backend: Literal["kit", "official"] = field(
        default="kit", metadata={"help": "kit: our implementation; official: the `vbench` package in its own interpreter."})
    batch_size: int = field(default=4, metadata={"help": "Videos per scoring call."})
    device: str | None = field(default=None, metadata={"help": "cuda or cpu for sampling and scoring; default: cuda if available."})
    bootstrap_resamples: int = field(default=paired_stats.BOOTSTRAP_RESAMPLES,
                                     metadata={"help": "Bootstrap resamples of the prompts."})
    bootstrap_seed: int = field(default=0, metadata={"help": "Seed of the bootstrap (the report is reproducible)."})
    grid_prompts: int = field(default=4, metadata={"help": "Prompts shown in the frame grid (video 0 of each)."})
    note: str | None = field(default=None, metadata={"help": "A line shown first in every form of the report (the "
                                                           "demo marks its smoke run so)."})
    output_dir: str | None = field(default=None, metadata={"help": "Samples, score caches and the report."})

    def __post_init__(self) -> None:
        if self.output_dir is None:
            raise ConfigError("--output_dir is required")
        if (self.prompts is None) == (self.vbench_prompts is None):
            raise ConfigError("give exactly one of --prompts (a prompt file) and --vbench_prompts (VBench_full_info.json)")
        if self.prompts is not None:
            self.prompts = resolve_prompt_file(self.prompts)
        if self.vbench_prompts is not None and not Path(self.vbench_prompts).is_file():
            raise ConfigError(f"--vbench_prompts {self.vbench_prompts} is not a file; give the path of VBench_full_info.json "
                              "(in the installed vbench package's folder)")
        self.rewards = [term if isinstance(term, RewardTerm) else RewardTerm(term) for term in self.rewards or []]
        self._check_models()
        self._check_metrics()
        for name, smallest in (("videos_per_prompt", 1), ("batch_size", 1), ("bootstrap_resamples", 1), ("grid_prompts", 0)):
            if getattr(self, name) < smallest:
                raise ConfigError(f"--{name} must be >= {smallest}, got {getattr(self, name)}")

    def _check_models(self) -> None:
        for lora in self.loras or []:
            if not Path(lora).is_dir():
                raise ConfigError(f"--loras {lora} is not a folder (expected a diffusers-format LoRA folder)")
        if self.labels is not None and len(self.labels) != len(self.loras or []):
            raise ConfigError(f"--labels gives {len(self.labels)} name(s) for {len(self.loras or [])} --loras folder(s)")
        for count in self.best_of:
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ConfigError(f"--best_of values must be integers >= 1, got {count!r}")
        if self.best_of and self.search_reward not in [term.label for term in self.rewards]:
            raise ConfigError(f"--best_of needs --search_reward, the label of one of --rewards "
                              f"({', '.join(term.label for term in self.rewards) or 'none given'}), got {self.search_reward!r}")
        check_labels([BASE, *self.model_labels(), *(model.label for model in self.test_time_models())], what="model")

    def _check_metrics(self) -> None:
        if not self.rewards and not self.vbench_dimensions:
            raise ConfigError("nothing to measure: give --rewards, --vbench_dimensions, or both")
        for term in self.rewards:
            if term.weight != 1.0:
                raise ConfigError(f"reward {term.label}: weight only applies to a training mix; remove it here")
            check_reward_entry(term.entry)
        check_labels([term.label for term in self.rewards] + list(self.vbench_dimensions), what="metric")
        unknown = sorted(set(self.vbench_dimensions) - set(DIMENSIONS))
        if unknown:
            raise ConfigError(f"--vbench_dimensions {unknown} unknown; choose from {', '.join(DIMENSIONS)}")
        if self.vbench_dimensions and (self.vbench_weights is None or not Path(self.vbench_weights).is_dir()):
            raise ConfigError(f"--vbench_weights {self.vbench_weights} is not a folder; VBench dimensions need the "
                              "weights folder (docs/vbench/), or set `vbench_dimensions: []` in the recipe to measure "
                              "with rewards only")
        if self.vbench_backend not in VBENCH_BACKENDS:
            raise ConfigError(f"--vbench_backend must be one of {', '.join(VBENCH_BACKENDS)}, got {self.vbench_backend!r}")

    def model_labels(self) -> list[str]:
        """The tuned models' names, in --loras order."""
        return list(self.labels) if self.labels is not None else [default_label(lora) for lora in self.loras or []]

    def test_time_models(self) -> list[Model]:
        """The base model under best-of-N search, one per --best_of value."""
        return [Model(f"{BASE}+best_of_{count}", None, best_of=count) for count in self.best_of]

    def metrics(self) -> list[str]:
        """Every column of the report: the rewards by label, then the VBench dimensions."""
        return [term.label for term in self.rewards] + list(self.vbench_dimensions)


def default_label(lora: str) -> str:
    """``runs/grpo_descore/final`` -> ``grpo_descore``; any other folder by its own name."""
    path = Path(lora).resolve()
    return path.parent.name if path.name == "final" else path.name


def check_labels(labels: Sequence[str], *, what: str) -> None:
    """Labels name folders and report columns: non-empty, no path separator, no repeat."""
    for label in labels:
        if not label or "/" in label or "\\" in label or label in (".", ".."):
            raise ConfigError(f"{what} label {label!r} cannot name a folder; give a plain name")
    repeated = sorted({label for label in labels if list(labels).count(label) > 1})
    if repeated:
        raise ConfigError(f"{what} label(s) {', '.join(repeated)} given twice; give each a distinct label")


@dataclass(frozen=True)
class Model:
    label: str
    lora: str | None
    best_of: int | None = None  # sampled with best-of-N test-time search by CompareConfig.search_reward


@dataclass(frozen=True)
class PromptSuite:
    """The prompts in sampling order; ``dimensions[i]`` the VBench dimensions prompt i is listed for (None: a
    user's prompt file, measured on every prompt)."""

    prompts: list[str]
    file: Path
    dimensions: list[tuple[str, ...]] | None


@dataclass(frozen=True)
class CompareReport:
    comparison: Comparison
    files: ReportFiles
    output_dir: Path


def run_compare(policy_args: PolicyConfig, compare: CompareConfig) -> CompareReport:
    """Sample, evaluate and report (see the module docstring)."""
    if not compare.loras and not compare.best_of:
        raise ConfigError("--loras or --best_of is required: tuned LoRA folders, or best-of-N test-time columns, to "
                          "compare with the base model")
    output = claim_output(compare.output_dir, JOB, resolved_config({"policy": policy_args, "compare": compare}))
    return compare_models(policy_args, compare, output, job=JOB)


def claim_output(output_dir: str, job: str, record: dict[str, dict[str, Any]], *,
                 allowed: Sequence[str] = EVALUATION_FIELDS) -> Path:
    """The output folder, refused when it holds another command's files or a comparison with another prompt
    suite or sampling (fields outside ``allowed``); the configuration is then recorded in it."""
    output = check_output_directory(output_dir, marker=RUN_RECORD, overwrite=False)
    check_same_run(output, job, record, allowed=allowed,
                   remedy="A comparison folder holds one prompt suite and one sampling: give this one another --output_dir.")
    output.mkdir(parents=True, exist_ok=True)
    write_run_config(output, job, record)
    return output


def compare_models(
    policy_args: PolicyConfig, compare: CompareConfig, output: Path, *, job: str,
    trained_on: Mapping[str, str] | None = None, extra_rewards: Sequence[RewardTerm] = (),
) -> CompareReport:
    """Steps 1-5 into the claimed ``output``. An ablation passes the reward each LoRA was trained on
    (``trained_on``: label -> metric) and those rewards as ``extra_rewards`` (scored like ``rewards``)."""
    rewards = merged_rewards(compare.rewards, extra_rewards)
    models = [Model(BASE, None), *(Model(label, lora) for label, lora in zip(compare.model_labels(), compare.loras or [])),
              *compare.test_time_models()]
    suite = prompt_suite(compare, output)
    videos = {model.label: sample_model(policy_args, compare, suite=suite, model=model, output=output) for model in models}
    values = {label: evaluate(compare, rewards, suite=suite, videos=paths, output=output, label=label)
              for label, paths in videos.items()}
    metrics = [term.label for term in rewards] + list(compare.vbench_dimensions)
    comparison = summarise(values, models=list(videos), metrics=metrics, compare=compare, trained_on=trained_on)
    shown = range(min(compare.grid_prompts, len(suite.prompts)))
    grid = {label: [(suite.prompts[i], paths[i][0]) for i in shown] for label, paths in videos.items()}
    record = _record(policy_args, compare, suite=suite, models=models, rewards=rewards, job=job)
    files = write_report(output, comparison, record=record, grid=grid)
    return CompareReport(comparison, files, output)


def merged_rewards(rewards: Sequence[RewardTerm], extra: Sequence[RewardTerm]) -> list[RewardTerm]:
    """``rewards`` then the ``extra`` ones not among them; one label naming two different entries is refused."""
    merged = {term.label: term for term in rewards}
    for term in extra:
        if term.label in merged and merged[term.label].entry != term.entry:
            raise ConfigError(f"reward label {term.label} names two entries, {merged[term.label].entry} and {term.entry}; "
                              "give one of them another label")
        merged.setdefault(term.label, term)
    return list(merged.values())


# ----- step 1: the prompt suite ------------------------------------------------------------------------------


def prompt_suite(compare: CompareConfig, output: Path) -> PromptSuite:
    if compare.prompts is not None:
        return PromptSuite(read_prompts(compare.prompts), Path(compare.prompts), None)
    listed = vbench_suite(Path(compare.vbench_prompts), compare.prompt_dimensions)
    path = output / "prompts.txt"
    with atomic_file(path) as handle:
        handle.write("".join(f"{prompt}\n" for prompt in listed))
    return PromptSuite(list(listed), path, list(listed.values()))


def vbench_suite(full_info: Path, dimensions: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Every prompt of VBench's ``VBench_full_info.json`` (a list of ``{"prompt_en", "dimension": [...]}``)
    listed for one of ``dimensions``, once, in file order, with the requested dimensions it is listed for."""
    try:
        entries = json.loads(full_info.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{full_info} is not readable JSON ({error}); give VBench's VBench_full_info.json") from error
    if not isinstance(entries, list):
        raise DataError(f"{full_info} must hold a list of prompt entries (VBench_full_info.json's layout)")
    suite: dict[str, tuple[str, ...]] = {}
    listed: set[str] = set()
    for number, entry in enumerate(entries):
        if not (isinstance(entry, dict) and isinstance(entry.get("prompt_en"), str) and isinstance(entry.get("dimension"), list)):
            raise DataError(f"{full_info}: entry {number} lacks a 'prompt_en' string and a 'dimension' list: {entry!r:.200}")
        listed.update(entry["dimension"])
        chosen = tuple(dimension for dimension in entry["dimension"] if dimension in dimensions)
        prompt = entry["prompt_en"].strip()
        if chosen and prompt:
            suite[prompt] = tuple(dict.fromkeys(suite.get(prompt, ()) + chosen))
    missing = sorted(set(dimensions) - listed)
    if missing:
        raise ConfigError(f"{full_info} lists no prompt for {missing}; its dimensions: {', '.join(sorted(listed))}")
    return suite


# ----- step 2: sampling ----------------------------------------------------------------------------------------


def sample_model(policy_args: PolicyConfig, compare: CompareConfig, *, suite: PromptSuite, model: Model,
                 output: Path) -> list[list[Path]]:
    """The model's videos, ``[prompt][k]``, sampled by ``tune sample`` (only those not on disk yet); a test-time
    model's with its best-of-N search by ``search_reward``."""
    search = {}
    if model.best_of is not None:
        term = next(term for term in compare.rewards if term.label == compare.search_reward)
        search = {"reward": str(write_reward_file(term, output / "search")), "best_of": model.best_of}
    paths = run_sample(policy_args, SampleConfig(
        prompts=str(suite.file), output_dir=str(output / "samples" / model.label), lora=model.lora, seed=compare.seed,
        videos_per_prompt=compare.videos_per_prompt, sampler=compare.sampler, file_naming="vbench",
        lossless=compare.lossless, device=compare.device, **search,
    ))
    per_prompt = compare.videos_per_prompt
    return [paths[start : start + per_prompt] for start in range(0, len(paths), per_prompt)]


def seed_of(compare: CompareConfig, prompt_index: int, k: int) -> int:
    """The sampler's seed scheme (generator_rl/sample.py)."""
    return compare.seed + SEED_STRIDE * prompt_index + k


# ----- step 3: evaluation --------------------------------------------------------------------------------------


def evaluate(compare: CompareConfig, rewards: Sequence[RewardTerm], *, suite: PromptSuite, videos: list[list[Path]],
             output: Path, label: str) -> dict[str, np.ndarray]:
    """Metric -> (P, K) values of one model's videos: every reward, then every VBench dimension."""
    index = output / "samples" / label / INDEX
    values = {term.label: reward_values(term, index, videos=videos, scores=output / "scores" / label,
                                        batch_size=compare.batch_size) for term in rewards}
    if compare.vbench_dimensions:
        per_video = vbench_per_video(index, compare, output=output / "vbench" / label)
        values |= {dimension: vbench_values(per_video, videos, dimension=dimension, suite=suite)
                   for dimension in compare.vbench_dimensions}
    return values


def reward_values(term: RewardTerm, index: Path, *, videos: list[list[Path]], scores: Path, batch_size: int) -> np.ndarray:
    """(P, K) rewards of the videos, NaN where scoring failed; cached in ``scores/<label>.jsonl``."""
    scores.mkdir(parents=True, exist_ok=True)
    entry_file = write_reward_file(term, scores)
    output = scores / f"{term.label}.jsonl"
    run_score(ScoreConfig(data=str(index), reward=str(entry_file), output=str(output), skip_invalid=True,
                          batch_size=batch_size))
    rewards = {}
    for line in output.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        rewards[Path(record["video"]).resolve()] = math.nan if record["reward"] is None else float(record["reward"])
    return _grid(videos, lambda path: rewards.get(path.resolve(), math.nan))


def write_reward_file(term: RewardTerm, folder: Path) -> Path:
    """``<folder>/<label>.reward.yaml``: the entry as the ``--reward`` file of ``reward score`` / ``tune sample``."""
    entry_file = folder / f"{term.label}.reward.yaml"
    with atomic_file(entry_file) as handle:
        yaml.safe_dump({**term.entry, "label": term.label}, handle, sort_keys=False)
    return entry_file


def vbench_per_video(index: Path, compare: CompareConfig, *, output: Path) -> dict[str, dict[str, float]]:
    """VBench's per-video values (absolute path -> dimension -> value) from the harness (benchmarks/vbench/),
    imported here so a rewards-only comparison never loads it."""
    from benchmarks.vbench.job import VBenchConfig, run_vbench

    result = run_vbench(VBenchConfig(videos=str(index), weights=compare.vbench_weights,
                                     dimensions=list(compare.vbench_dimensions), output_dir=str(output),
                                     backend=compare.vbench_backend, batch_size=compare.batch_size, device=compare.device))
    return result.per_video


def vbench_values(per_video: Mapping[str, Mapping[str, float]], videos: list[list[Path]], *, dimension: str,
                  suite: PromptSuite) -> np.ndarray:
    """(P, K) values of one dimension on its aggregate's scale; NaN where the harness gave none, and — with a
    VBench suite that lists prompts for this dimension — on the prompts VBench does not list for it."""
    by_path = {Path(path).resolve(): values for path, values in per_video.items()}
    scale = VBENCH_PER_VIDEO_SCALE.get(dimension, 1.0)
    values = _grid(videos, lambda path: float(by_path.get(path.resolve(), {}).get(dimension, math.nan)) * scale)
    if suite.dimensions is not None and any(dimension in listed for listed in suite.dimensions):
        values[[dimension not in listed for listed in suite.dimensions]] = math.nan
    return values


def _grid(videos: list[list[Path]], value_of) -> np.ndarray:
    return np.array([[value_of(path) for path in seeds] for seeds in videos], dtype=np.float64)


# ----- step 4: statistics --------------------------------------------------------------------------------------


def summarise(values: Mapping[str, Mapping[str, np.ndarray]], *, models: list[str], metrics: list[str],
              compare: CompareConfig, trained_on: Mapping[str, str] | None = None) -> Comparison:
    """Per-prompt means, model means, paired deltas against the base and (for an ablation) the hacking flags."""
    per_prompt = {model: {metric: paired_stats.prompt_means(values[model][metric]) for metric in metrics} for model in models}
    means = {model: {metric: _mean(per_prompt[model][metric]) for metric in metrics} for model in models}
    deltas = {
        model: {metric: paired_stats.paired_delta(per_prompt[BASE][metric], per_prompt[model][metric],
                                                resamples=compare.bootstrap_resamples, seed=compare.bootstrap_seed)
                for metric in metrics}
        for model in models if model != BASE
    }
    hacking = None
    if trained_on is not None:
        hacking = {model: paired_stats.hacked_metrics(deltas[model], trained_on=trained_on[model]) for model in deltas}
    return Comparison(models=models, metrics=metrics, means=means, deltas=deltas, per_prompt=per_prompt,
                      trained_on=dict(trained_on) if trained_on is not None else None, hacking=hacking,
                      resamples=compare.bootstrap_resamples, bootstrap_seed=compare.bootstrap_seed)


def _mean(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if len(finite) else None


# ----- step 5: what the report records -------------------------------------------------------------------------


def _record(policy_args: PolicyConfig, compare: CompareConfig, *, suite: PromptSuite, models: list[Model],
            rewards: Sequence[RewardTerm], job: str) -> dict[str, Any]:
    """The settings, models, suite and seeds the numbers come from (versions and commit are added by the report)."""
    return {
        "job": job,
        "config": resolved_config({"policy": policy_args, "compare": compare}),
        "models": {model.label: {"lora": model.lora, **({} if model.best_of is None else {
            "best_of": model.best_of, "search_reward": compare.search_reward})} for model in models},
        "rewards": {term.label: term.entry for term in rewards},
        "suite": {"source": compare.prompts or compare.vbench_prompts, "prompts": len(suite.prompts),
                  "videos_per_prompt": compare.videos_per_prompt,
                  "dimensions": None if suite.dimensions is None else
                  {dimension: sum(dimension in listed for listed in suite.dimensions) for dimension in compare.prompt_dimensions}},
        "seeds": {"seed": compare.seed, "scheme": f"video k of prompt i: seed + {SEED_STRIDE}*i + k (same for every model)",
                  "videos": [{"prompt": prompt, "k": k, "seed": seed_of(compare, i, k)}
                             for i, prompt in enumerate(suite.prompts) for k in range(compare.videos_per_prompt)]},
    }

