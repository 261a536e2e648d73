"""The ``descore reward score`` and ``descore reward export`` jobs."""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from . import score_output
from .base import RewardModel, ScoredItem, build_reward, check_reward_entry
from .calibration import CALIBRATION_FILE
from .checkpoint import ModelSource, resolve_model_source
from .data import PreferencePair, is_video_index, read_preferences, read_video_index
from .entry_file import RewardEntry, read_reward_entry
from .errors import ConfigError, DataError, VideoDecodeError
from .losses import pairwise_accuracy
from .modeling import EXPORT_MARKER, MANIFEST_NAME, REWARD_TOKEN, DeScoreManifest, DeScoreModel
from .prompts import template_sha256
from .run_record import (
    RUN_CONFIG,
    check_model_source,
    check_output_directory,
    check_output_file,
    code_commit,
    library_versions,
    looks_like_hub_id,
    resolved_config,
)
from .score_output import checkpoint_fingerprint
from .score_report import PromptMean, RewardStats, prompt_means
from .generation import GenerationSettings
from .scoring import DeScoreReward, default_device, default_dtype
from .video import DecodeLimitConfig, DecodeLimits, probe_video

logger = logging.getLogger(__name__)


# Options of ScoreConfig read only by DeScoreReward; with --reward the entry holds the reward's options.
DESCORE_ONLY_OPTIONS = ("revision", "cot", "cot_source", "max_new_tokens", "temperature", "repetition_penalty", "device", "dtype",
                        "attn_implementation", "backend", "vllm_mode", "server_url", "max_model_len",
                        "gpu_memory_utilization", "tensor_parallel_size")


@dataclass
class ScoreConfig(DecodeLimitConfig):
    """Score videos with a DeScore checkpoint or any registry reward; one JSON line per (video, prompt)."""

    model: str | None = field(
        default=None,
        metadata={"help": "DeScore checkpoint: a folder (training checkpoint or export) or a hub id owner/name (a "
                          "folder of that name wins; HF_HUB_OFFLINE=1 uses the hub cache only). Or give --reward."},
    )
    revision: str | None = field(
        default=None, metadata={"help": "Branch, tag or commit of a hub --model (default: main)."}
    )
    reward: str | None = field(
        default=None,
        metadata={"help": "YAML file holding one reward-registry entry, e.g. `name: temporal_smoothness` or `{name: "
                          "descore_no_cot, path: runs/descore/final}` (optional `label`), scored instead of --model."},
    )
    output: str | None = field(
        default=None,
        metadata={"help": "Output JSONL file. Lines are saved as each batch ends; a re-run with the same settings "
                          "scores only what is missing."},
    )
    data: str | None = field(
        default=None,
        metadata={"help": "Preference CSV/JSONL (every distinct video is scored), or a video index with prompt and "
                          "file columns such as `tune sample`'s index.csv (files relative to its folder)."},
    )
    video: list[str] | None = field(default=None, metadata={"help": "Video file(s) to score (instead of --data)."})
    prompt: list[str] | None = field(
        default=None, metadata={"help": "The T2V prompt: one for all --video files, or one per file."}
    )
    cot: bool = field(default=True, metadata={"help": "Write a CoT before scoring; --no-cot scores in one pass."})
    cot_source: Literal["generate", "data"] = field(
        default="generate",
        metadata={"help": "generate: write each CoT with the model; data: use the cot_a/cot_b columns of --data."},
    )
    batch_size: int = field(default=4, metadata={"help": "Videos per generate/forward call."})
    max_new_tokens: int = field(
        default=GenerationSettings.max_new_tokens,
        metadata={"help": "CoT length limit (DeScore: 4096); a CoT cut by it is flagged truncated in the output."},
    )
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy CoT (DeScore's inference setting)."})
    repetition_penalty: float = field(default=1.05, metadata={"help": "CoT repetition penalty (DeScore: 1.05)."})
    backend: Literal["hf", "vllm"] = field(
        default="hf",
        metadata={"help": "CoT writer: hf (transformers generate) or vllm (extra `vllm`; --model must be a merged "
                          "export, see docs/descore_generation.md)."},
    )
    vllm_mode: Literal["offline", "server"] = field(
        default="offline", metadata={"help": "vllm: an engine in this process, or a running `vllm serve` (--server_url)."}
    )
    server_url: str | None = field(default=None, metadata={"help": "vllm server mode: e.g. http://localhost:8000."})
    max_model_len: int = field(
        default=GenerationSettings.max_model_len,
        metadata={"help": "vllm: longest prompt + CoT in tokens; longer requests are refused before sending."},
    )
    gpu_memory_utilization: float = field(
        default=GenerationSettings.gpu_memory_utilization,
        metadata={"help": "vllm: share of GPU memory the engine may take (the HF scoring model needs the rest)."},
    )
    tensor_parallel_size: int = field(default=1, metadata={"help": "vllm: GPUs the engine shards the model over."})
    skip_invalid: bool = field(
        default=False, metadata={"help": "Record unreadable videos / invalid rows and score the rest."}
    )
    overwrite: bool = field(
        default=False,
        metadata={"help": "Score everything again into an --output that was scored with other settings (or by "
                          "something else), replacing it."},
    )
    device: str | None = field(default=None, metadata={"help": "cuda, cuda:1, cpu; default: cuda if available."})
    dtype: Literal["auto", "bfloat16", "float16", "float32"] | None = field(
        default=None, metadata={"help": "Backbone dtype; default bf16 on GPU, fp32 on CPU."}
    )
    attn_implementation: str | None = field(default=None, metadata={"help": "e.g. sdpa, flash_attention_2."})

    def __post_init__(self) -> None:
        if self.output is None:
            raise ConfigError("--output is required")
        if (self.model is None) == (self.reward is None):
            raise ConfigError("give exactly one of --model (a DeScore checkpoint) and --reward (a reward-entry YAML)")
        self.decode_limits()  # raises on a bad limit
        if (self.data is None) == (self.video is None):
            raise ConfigError("give exactly one of --data and --video")
        if self.video is not None:
            if not self.prompt or len(self.prompt) not in (1, len(self.video)):
                raise ConfigError(f"--prompt needs 1 or {len(self.video)} values for {len(self.video)} --video file(s)")
            if self.cot_source == "data":
                raise ConfigError("cot_source: data needs --data with cot_a/cot_b columns")
        if self.batch_size < 1:
            raise ConfigError(f"--batch_size must be >= 1, got {self.batch_size}")
        self.generation_settings()  # raises on a bad max_new_tokens, temperature or repetition_penalty
        check_output_file(self.output)
        if self.reward is None:
            check_checkpoint(self.model, revision=self.revision)
        else:
            self._check_reward_options()
            check_reward_entry(self.reward_entry.entry)

    def _check_reward_options(self) -> None:
        """Options that only DeScore reads must keep their defaults with --reward (they would do nothing)."""
        changed = [f"--{f.name}" for f in dataclasses.fields(ScoreConfig)
                   if f.name in DESCORE_ONLY_OPTIONS and getattr(self, f.name) != f.default]
        if changed:
            raise ConfigError(
                f"{', '.join(changed)} only apply to --model (a DeScore checkpoint); with --reward, set the reward's "
                f"options in {self.reward}"
            )

    @functools.cached_property
    def reward_entry(self) -> RewardEntry:
        """The --reward file's entry, read once."""
        return read_reward_entry(self.reward)

    @property
    def reward_name(self) -> str:
        """The name the summary table gives the reward."""
        if self.reward is not None:
            return self.reward_entry.label
        return "descore" if self.cot else "descore_no_cot"

    def generation_settings(self) -> GenerationSettings:
        return GenerationSettings(
            backend=self.backend,
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            repetition_penalty=self.repetition_penalty,
            vllm_mode=self.vllm_mode,
            server_url=self.server_url,
            max_model_len=self.max_model_len,
            gpu_memory_utilization=self.gpu_memory_utilization,
            tensor_parallel_size=self.tensor_parallel_size,
        )

    @property
    def cot_from_data(self) -> bool:
        """The CoTs are inputs (the data's cot_a/cot_b), not written by the model."""
        return self.cot and self.cot_source == "data"

    def settings(self) -> dict[str, dict[str, Any]]:
        """What decides the numbers in the output (recorded beside it; a re-run must match). Batch size,
        device, attention kernel and the vLLM engine's resources are left out: they do not change a reward beyond
        float noise. The CoT backend is kept: HF and vLLM kernels can write different CoTs."""
        if self.reward is not None:
            return resolved_config({"reward": self.reward_entry.settings()})
        device = torch.device(self.device) if self.device is not None else default_device()
        source = resolve_model_source(self.model, revision=self.revision)
        template = DeScoreManifest.read(source.folder).scoring_template
        return resolved_config({
            "model": checkpoint_identity(source),
            # The judge wording the model scores with (rows with their own instruction record it per line).
            "judge_template": {"sha256": template_sha256(template), "text": template},
            "scoring": {
                "cot": self.cot,
                "cot_source": self.cot_source if self.cot else None,
                "generation": self._recorded_generation() if self.cot and not self.cot_from_data else None,
                "dtype": str(default_dtype(self.dtype, device)).removeprefix("torch."),
            },
        })


    def _recorded_generation(self) -> dict[str, Any]:
        settings = self.generation_settings()
        return {"backend": settings.backend, **settings.decoding()}


def check_checkpoint(path: str, *, revision: str | None = None, option: str = "--model") -> None:
    """Fail before anything loads when ``path`` is neither a DeScore checkpoint folder nor a hub id (in offline
    mode: one in the hub cache). A folder of that name wins over a hub id, as when loading."""
    local = Path(path).expanduser()
    if local.exists():
        if revision is not None:
            raise ConfigError(f"--revision {revision} applies to a hub id, but {option} {path} is a local folder")
        DeScoreManifest.read(local)  # CheckpointError naming the folder when the manifest is missing or malformed
        return
    if not looks_like_hub_id(path):
        raise ConfigError(
            f"{option} {path} does not exist; give a DeScore checkpoint folder (e.g. runs/descore/final) or a hub "
            "id (owner/name)"
        )
    check_model_source(path, what=option, revision=revision)


def checkpoint_identity(source: ModelSource) -> dict[str, str]:
    """How the records of scores and exports name the checkpoint, so that a re-run can tell it is the same one:
    a local folder by absolute path, a hub id by id and snapshot commit (not the cache path, which differs
    between machines); both with the content fingerprint, so that a checkpoint changed in place, or a hub
    branch that moved, is another model."""
    fingerprint = checkpoint_fingerprint(source.folder)
    if source.repo_id is None:
        return {"path": str(source.folder.resolve()), "fingerprint": fingerprint}
    return {"path": source.repo_id, "revision": source.commit, "fingerprint": fingerprint}


@dataclass(frozen=True)
class _Request:
    video: str
    prompt: str
    cot: str | None
    instruction: str | None


@dataclass(frozen=True)
class ScoreSummary:
    """``scored``/``failed`` count this run's items, ``resumed`` of them were taken from an earlier run's lines."""

    scored: int
    failed: int
    skipped_rows: int
    parse_failure_rate: float
    accuracy: float | None
    decided_pairs: int
    resumed: int = 0
    truncated: int = 0  # CoTs cut by max_new_tokens (scored, and flagged in their lines)
    rewards: tuple[RewardStats, ...] = ()  # one per reward scored (today: one)
    prompt_means: tuple[PromptMean, ...] = ()  # mean reward per prompt, in input order


def run_score(config: ScoreConfig) -> ScoreSummary:
    """Score and write ``config.output``; pairs data also gives the pairwise accuracy over decided pairs.

    Steps: read the inputs; take the lines an earlier run with the same settings wrote; check the videos
    still to score; score them batch by batch, appending each batch; write the file in request order.
    """
    output, settings = Path(config.output), config.settings()
    key = functools.partial(_record_key, given_cot=config.cot_from_data)
    data_is_index = config.data is not None and is_video_index(config.data)
    pairs, requests, skipped_rows = _requests(config, data_is_index=data_is_index)
    earlier = {key(record): record for record in score_output.earlier_records(output, settings, overwrite=config.overwrite)}
    # A line with an error (an unreadable video) is tried again: the file may have been fixed since.
    done = {key(r): earlier[key(r)] for r in requests if key(r) in earlier and "error" not in earlier[key(r)]}
    pending = [request for request in requests if key(request) not in done]
    if (config.video is not None or data_is_index) and not config.skip_invalid:
        what = "--video file(s)" if config.video is not None else f"video file(s) listed in {config.data}"
        _check_videos([request.video for request in pending], config.decode_limits(), what=what)
    if done:
        logger.info("%s: %d of %d item(s) already scored by an earlier run; scoring %d", output, len(done), len(requests), len(pending))
    score_output.start(output, settings, overwrite=config.overwrite)
    records = done | (_score_pending(config, pending, output, key) if pending else {})
    wanted = [records[key(request)] for request in requests]
    kept = [record for record_key, record in earlier.items() if record_key not in records]
    if kept:
        logger.warning("%s: keeping %d line(s) of an earlier run for items not among this run's inputs", output, len(kept))
    score_output.finish(output, wanted + kept)
    accuracy, decided = _pair_accuracy(pairs, records, given_cot=config.cot_from_data)
    failed = sum(record["reward"] is None for record in wanted)
    parsed = [record["parse_ok"] for record in wanted if record["parse_ok"] is not None]
    return ScoreSummary(
        scored=len(wanted) - failed,
        failed=failed,
        skipped_rows=skipped_rows,
        parse_failure_rate=sum(not ok for ok in parsed) / len(parsed) if parsed else math.nan,
        accuracy=accuracy,
        decided_pairs=decided,
        resumed=len(done),
        truncated=sum(bool(record.get("truncated")) for record in wanted),
        rewards=(RewardStats.of(config.reward_name, [record["reward"] for record in wanted]),),
        prompt_means=prompt_means(wanted),
    )


def _requests(config: ScoreConfig, *, data_is_index: bool) -> tuple[list[PreferencePair], list[_Request], int]:
    """(pairs, distinct items to score in order, skipped data rows) from --data (preferences or a video
    index) or --video/--prompt."""
    if config.data is None:
        prompts = config.prompt * len(config.video) if len(config.prompt) == 1 else config.prompt
        requests = [_Request(str(Path(video)), prompt, None, None) for video, prompt in zip(config.video, prompts)]
        return [], list(dict.fromkeys(requests)), 0
    if data_is_index:
        if config.cot_from_data:
            raise ConfigError(f"{config.data} is a video index; cot_source: data needs a preference file with cot_a/cot_b")
        index = read_video_index(config.data, skip_invalid=config.skip_invalid)
        requests = [_Request(video.video, video.prompt, None, None) for video in index.videos]
        return [], list(dict.fromkeys(requests)), len(index.skipped)
    data = read_preferences(
        config.data,
        skip_invalid=config.skip_invalid,
        reserved_tokens=(REWARD_TOKEN,),
        probe_videos=True,
        limits=config.decode_limits(),
    )
    if config.cot_from_data and not all(pair.has_cot for pair in data.pairs):
        raise ConfigError(f"{config.data}: cot_source: data needs cot_a and cot_b on every row")
    requests = [request for pair in data.pairs for request in _pair_requests(pair, config.cot_from_data)]
    return data.pairs, list(dict.fromkeys(requests)), len(data.skipped)


def _pair_requests(pair: PreferencePair, use_data_cot: bool) -> tuple[_Request, _Request]:
    return tuple(
        _Request(video, pair.prompt, cot if use_data_cot else None, pair.instruction)
        for video, cot in ((pair.video_a, pair.cot_a), (pair.video_b, pair.cot_b))
    )


def _record_key(item: _Request | dict[str, Any], *, given_cot: bool) -> tuple:
    """What identifies an item in the output: video, prompt, judge instruction, and the CoT when it was an
    input (``cot_source: data``) rather than written by the model."""
    values = item if isinstance(item, dict) else vars(item)
    return values["video"], values["prompt"], values.get("instruction"), values.get("cot") if given_cot else None


def _check_videos(videos: list[str], limits: DecodeLimits, *, what: str) -> None:
    """Open every file before the model loads; one error lists all that cannot be read."""
    problems = []
    for video in dict.fromkeys(videos):
        try:
            probe_video(video, limits=limits)
        except VideoDecodeError as error:
            problems.append(f"{video}: {error.reason}")
    if problems:
        listing = "\n  ".join(problems)
        raise DataError(
            f"{len(problems)} {what} cannot be read:\n  {listing}\n"
            "Fix or remove them, or pass --skip_invalid true to record them as failed and score the rest."
        )


def _score_pending(
    config: ScoreConfig, pending: list[_Request], output: Path, key: Callable[[_Request], tuple]
) -> dict[tuple, dict[str, Any]]:
    """Score ``pending`` one batch per call, appending each batch's lines as soon as it is done."""
    score_batch = _batch_scorer(config)
    records = {}
    with score_output.appending(output) as handle:
        for start_index in tqdm(range(0, len(pending), config.batch_size), desc=f"scoring ({config.reward_name})"):
            batch = pending[start_index : start_index + config.batch_size]
            lines = [_record(request, item) for request, item in zip(batch, score_batch(batch))]
            score_output.append_records(handle, lines)
            records |= {key(request): line for request, line in zip(batch, lines)}
    return records


def _batch_scorer(config: ScoreConfig) -> Callable[[list[_Request]], list[ScoredItem]]:
    """Load the scorer once; return a function scoring one batch of requests."""
    if config.reward is not None:
        reward = build_reward(config.reward_entry.entry)
        return functools.partial(_score_with_reward, reward, limits=config.decode_limits(), skip_invalid=config.skip_invalid)
    scorer = DeScoreReward(
        config.model,
        revision=config.revision,
        use_cot=config.cot,
        batch_size=config.batch_size,
        generation=config.generation_settings(),
        skip_invalid=config.skip_invalid,
        device=config.device,
        dtype=config.dtype,
        attn_implementation=config.attn_implementation,
        decode_limits=config.decode_limits(),
    )

    def score_batch(batch: list[_Request]) -> list[ScoredItem]:
        return scorer.score(
            [request.video for request in batch],
            [request.prompt for request in batch],
            cots=[request.cot for request in batch],
            instructions=[request.instruction for request in batch],
        ).items

    return score_batch


def _score_with_reward(
    reward: RewardModel, batch: list[_Request], *, limits: DecodeLimits, skip_invalid: bool
) -> list[ScoredItem]:
    """A registry reward on (video, prompt). With ``skip_invalid`` a video that does not open is recorded as
    failed and left out (the reward models' own options decide how they treat files that open)."""
    items: dict[int, ScoredItem] = {}
    if skip_invalid:
        for index, request in enumerate(batch):
            try:
                probe_video(request.video, limits=limits)
            except VideoDecodeError as error:
                items[index] = ScoredItem(reward=math.nan, error=str(error))
    readable = [index for index in range(len(batch)) if index not in items]
    if readable:
        scored = reward.score([batch[i].video for i in readable], [batch[i].prompt for i in readable]).items
        items |= dict(zip(readable, scored))
    return [items[index] for index in range(len(batch))]


def _record(request: _Request, item: ScoredItem) -> dict[str, Any]:
    record = {
        "video": request.video,
        "prompt": request.prompt,
        "reward": item.reward if item.ok else None,
        "cot": item.cot,
        "sub_scores": item.sub_scores,
        "overall_score": item.overall_score,
        "parse_ok": item.parse_ok,
        "truncated": item.truncated,
    }
    if request.instruction is not None:
        record["instruction"] = request.instruction
    if item.error is not None:
        record["error"] = item.error
    return record


def _pair_accuracy(
    pairs: list[PreferencePair], records: dict[tuple, dict[str, Any]], *, given_cot: bool
) -> tuple[float | None, int]:
    """Accuracy over the pairs whose two videos both got a reward (a failed side leaves the pair undecided)."""
    margins, labels = [], []
    for pair in pairs:
        a, b = (records[_record_key(side, given_cot=given_cot)]["reward"] for side in _pair_requests(pair, given_cot))
        if a is not None and b is not None:
            margins.append(a - b)
            labels.append(pair.label)
    if not margins:
        return None, 0
    return pairwise_accuracy(torch.tensor(margins, dtype=torch.float64), torch.tensor(labels))


@dataclass
class ExportConfig:
    """Write a merged DeScore checkpoint: a plain backbone that HF and vLLM loaders open (LoRA merged, processor
    with <Reward>), plus the head and manifest, so that the export alone also scores."""

    model: str | None = field(
        default=None, metadata={"help": "DeScore checkpoint: a folder or a hub id owner/name (a folder of that name wins)."}
    )
    revision: str | None = field(
        default=None, metadata={"help": "Branch, tag or commit of a hub --model (default: main)."}
    )
    output_dir: str | None = field(
        default=None,
        metadata={"help": f"Directory to write: new, empty, or an earlier export (it holds {EXPORT_MARKER})."},
    )
    merged: bool = field(default=True, metadata={"help": "Merge LoRA into the weights (the only export format)."})
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = field(default="auto", metadata={"help": "Weight dtype."})
    overwrite: bool = field(
        default=False,
        metadata={"help": "Replace a non-empty --output_dir that is not an earlier export. A training run or "
                          "checkpoint folder, and the checkpoint being exported, are never replaced."},
    )

    def __post_init__(self) -> None:
        if self.model is None or self.output_dir is None:
            raise ConfigError("--model and --output_dir are required")
        if not self.merged:
            raise ConfigError("export writes merged weights; an adapter checkpoint is already what training saves")
        check_checkpoint(self.model, revision=self.revision)
        local = Path(self.model).expanduser()
        check_export_target(Path(self.output_dir), source=local if local.exists() else None, overwrite=self.overwrite)


def check_export_target(output: Path, *, source: Path | None, overwrite: bool) -> None:
    """Refuse an --output_dir whose replacement would lose work: the local source checkpoint (``None`` for a hub
    id) or a folder holding it, a training run or checkpoint folder (always), anything else non-empty that no
    export wrote (unless ``overwrite``). An earlier export holds a manifest too; its marker tells it apart."""
    if source is not None and (output.resolve() == source.resolve() or output.resolve() in source.resolve().parents):
        raise ConfigError(f"--output_dir {output} holds the checkpoint being exported (--model {source}); choose another folder")
    run_files = [RUN_CONFIG, MANIFEST_NAME, "final", "checkpoint-*"]
    if (output / EXPORT_MARKER).is_file():
        run_files.remove(MANIFEST_NAME)
    if output.is_dir() and any(any(output.glob(pattern)) for pattern in run_files):
        raise ConfigError(
            f"--output_dir {output} is a training run or checkpoint folder (it holds one of {', '.join(run_files)}); "
            "export never replaces one, not even with --overwrite. Choose a new folder."
        )
    check_output_directory(output, marker=EXPORT_MARKER, overwrite=overwrite)


def run_export(config: ExportConfig) -> Path:
    """Merge and write the checkpoint with its head and manifest, marked as an export (what it came from, with
    which code) in the same atomic write, so that a later export may replace it."""
    source = resolve_model_source(config.model, revision=config.revision)
    identity = checkpoint_identity(source)
    record = {
        "source_model": identity["path"],
        "source_revision": identity.get("revision"),
        "source_fingerprint": identity["fingerprint"],
        "dtype": config.dtype,
        "versions": library_versions(),
        "commit": code_commit(),
    }
    carried = [path for path in [source.folder / CALIBRATION_FILE] if path.is_file()]  # the stats travel with it
    model = DeScoreModel.from_pretrained(source.folder, dtype=config.dtype)
    return model.export_merged(config.output_dir, record=record, files=carried)
