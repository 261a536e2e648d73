"""``descore reward collect-cot``: write the CoTs that stage 1 trains on (docs/descore_generation.md).

DeScore's cold start trains the head on chains of thought collected in advance, one per video (the official
stage-1 CSV's ``CoT_A`` / ``CoT_B``; arXiv 2605.05922). This job writes them for a preference file with a
base instruct model or a DeScore checkpoint, through the HF or vLLM backend (:mod:`reward.generation`):

* ours (``prompt, video_a, video_b, label, ...``) gains ``cot_a, cot_b``, the parsed sub-scores the judge gave
  (``judge_scores_a, judge_scores_b``, JSON; never ``scores_a/_b``, which hold ground truth) and
  ``truncated_a, truncated_b``;
* the official stage-1 CSV (``videos, problem, ...``) gains ``CoT_A, CoT_B`` (same extra columns), the row's
  ``problem`` text being the judge instruction.

Both outputs are read by :func:`reward.data.read_preferences` and trained on by stage 1 unchanged.

Files (for ``--output pairs_with_cot.csv``)::

    pairs_with_cot.csv             the result, written atomically at the end, rows in input order
    pairs_with_cot.csv.cots.jsonl  one line per written CoT (video, prompt, instruction, CoT, sub-scores,
                                   truncation), appended and fsynced after every batch
    pairs_with_cot.csv.meta.json   model identity, judge template, generation settings, video settings, data
                                   sha256; after the run also the summary (counts, bad videos with reasons)

A re-run with the same settings reuses every CoT in the ``.cots.jsonl`` file and writes only the missing ones;
other settings are refused (the differences are listed; ``--overwrite true`` starts afresh). A video appears
once per (video, judge prompt) however many pairs use it. A video that cannot be read (or whose prompt would
not fit vLLM's ``max_model_len``) is listed with its reason, and the rows using it are skipped and counted.

Under ``accelerate launch`` (or ``torchrun``) every process writes every k-th missing CoT into its own part
file (``.cots.rank{r}.jsonl``, its bad videos into ``.bad.rank{r}.json``); the main process merges them and
writes the output. With vLLM, prefer one process
with ``tensor_parallel_size`` over the GPUs (or one process per GPU, each seeing only its own GPU).
"""

from __future__ import annotations

import ast
import csv
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from tqdm.auto import tqdm

from .checkpoint import atomic_file, resolve_model_source, weights_fingerprint
from .cot_cache import Item, append_lines, cache_path, merge_parts, part_path, read_all_caches, read_cache
from .errors import ConfigError, DataError, VideoDecodeError
from .generation import CotBackend, GenerationConfig, GenerationSettings, RequestTooLongError, build_backend
from .jobs import checkpoint_identity
from .modeling import MANIFEST_NAME, DeScoreManifest, pixel_factor
from .prompts import JUDGE_TEMPLATE, judge_text, parse_judge_answer, read_judge_template
from .records import read_records
from .run_record import RunMismatchError, config_differences, file_sha256, read_record, resolved_config, write_record
from .tiny_models import resolve_backbone
from .video import DecodeLimitConfig, SampledVideo, VideoSpec, load_video, probe_video

logger = logging.getLogger(__name__)

JOB = "reward collect-cot"
OURS_COLUMNS = ("cot_a", "cot_b")
OFFICIAL_COLUMNS = ("CoT_A", "CoT_B")
EXTRA_COLUMNS = ("judge_scores_a", "judge_scores_b", "truncated_a", "truncated_b")
# What a DeScore checkpoint decides itself (its manifest), settable only for a plain instruct model.
PLAIN_MODEL_OPTIONS = ("template", "video_fps", "video_min_frames", "video_max_frames", "video_min_pixels",
                       "video_max_pixels")


@dataclass
class CollectCotConfig(GenerationConfig, DecodeLimitConfig):
    """Write a CoT per video of a preference file (stage-1 input) with an instruct model or a DeScore checkpoint."""

    model: str | None = field(
        default=None,
        metadata={"help": "A DeScore checkpoint (its video settings, processor and judge template are used) or a "
                          "plain instruct model: folder, hub id, or tiny:qwen3-vl."},
    )
    data: str | None = field(
        default=None, metadata={"help": "Preference CSV/JSONL: ours (prompt, video_a, video_b, label) or the "
                                        "official stage-1 CSV (videos, problem, ...)."}
    )
    output: str | None = field(default=None, metadata={"help": "Output .csv or .jsonl (the input's columns + CoTs)."})
    template: str | None = field(
        default=None,
        metadata={"help": "Plain model only: a text file holding the judge template ({prompt} placeholder, one "
                          "<video> marker); default: the kit's template."},
    )
    batch_size: int = field(default=4, metadata={"help": "Videos per generate call."})
    seed: int = field(default=0, metadata={"help": "Seed of sampled CoTs (temperature > 0); batch i uses seed + i."})
    video_fps: float = field(default=2.0, metadata={"help": "Plain model only: frames sampled per second."})
    video_min_frames: int = field(default=4, metadata={"help": "Plain model only: fewest frames per clip."})
    video_max_frames: int = field(default=768, metadata={"help": "Plain model only: most frames per clip."})
    video_min_pixels: int | None = field(
        default=None, metadata={"help": "Plain model only: fewest pixels per frame (None: 128 merged tokens)."}
    )
    video_max_pixels: int = field(default=200_704, metadata={"help": "Plain model only: most pixels per frame."})
    device: str | None = field(default=None, metadata={"help": "HF backend: cuda, cpu; default cuda if available."})
    dtype: Literal["auto", "bfloat16", "float16", "float32"] | None = field(
        default=None, metadata={"help": "HF backend: weight dtype; default bf16 on GPU, fp32 on CPU."}
    )
    attn_implementation: str | None = field(default=None, metadata={"help": "HF backend: e.g. sdpa."})
    overwrite: bool = field(
        default=False, metadata={"help": "Start afresh over an output (and its CoT cache) written with other settings."}
    )

    def __post_init__(self) -> None:
        if self.model is None or self.data is None or self.output is None:
            raise ConfigError("--model, --data and --output are required")
        if Path(self.output).suffix.lower() not in (".csv", ".jsonl"):
            raise ConfigError(f"--output {self.output} must end in .csv or .jsonl")
        if Path(self.output).resolve() == Path(self.data).resolve():
            raise ConfigError("--output must differ from --data (the input is never rewritten)")
        if not Path(self.data).is_file():
            raise ConfigError(f"--data {self.data} does not exist")
        if self.batch_size < 1:
            raise ConfigError(f"--batch_size must be >= 1, got {self.batch_size}")
        if self.template is not None and not Path(self.template).is_file():
            raise ConfigError(f"--template {self.template} is not a file")
        self.decode_limits()
        self.generation_settings()  # raises on a bad generation value
        self.model = resolve_backbone(self.model, what="--model")


class CotModel(NamedTuple):
    """What collection needs of the model: how to prompt it, how it sees video, and what it is."""

    folder: Path
    processor: Any
    video_spec: VideoSpec
    template: str
    suppress_token_ids: tuple[int, ...]
    identity: dict[str, Any]
    descore: bool


class Row(NamedTuple):
    line: int
    values: dict[str, Any]
    items: tuple[Item, Item]


@dataclass(frozen=True)
class CollectCotSummary:
    """``generated`` CoTs written by this run, ``reused`` taken from an earlier one; ``rows_skipped`` lists
    (line, reason) of rows left out (a bad video, an unreadable row)."""

    output: Path
    rows_written: int
    rows_skipped: tuple[tuple[int, str], ...]
    generated: int
    reused: int
    truncated: int
    parse_failures: int
    bad_videos: tuple[tuple[str, str], ...]


def meta_path(output: Path) -> Path:
    return output.with_name(output.name + ".meta.json")


def run_collect_cot(config: CollectCotConfig) -> CollectCotSummary:
    """Read the pairs, check the settings against an earlier run, write the missing CoTs batch by batch, then
    the output file in input order."""
    from accelerate import PartialState

    on_cpu = config.backend == "hf" and (config.device or ("cuda" if torch.cuda.is_available() else "cpu")) == "cpu"
    state = PartialState(cpu=on_cpu)  # cpu=True: processes launched on CPU form a gloo group
    output = Path(config.output)
    model = load_cot_model(config)
    layout, columns, rows, skipped = read_pairs(Path(config.data))
    settings = run_settings(config, model, layout)
    check_earlier_run(output, settings, overwrite=config.overwrite)
    state.wait_for_everyone()  # every process has checked before the main one writes
    if state.is_main_process:
        if config.overwrite:
            for stale in [cache_path(output), *output.parent.glob(f"{output.name}.cots.rank*.jsonl")]:
                stale.unlink(missing_ok=True)
        write_record(meta_path(output), JOB, settings)
    state.wait_for_everyone()
    done = read_all_caches(output)
    items = list(dict.fromkeys(item for row in rows for item in row.items))
    pending = [item for item in items if item not in done]
    bad: dict[str, str] = {}
    if pending:
        shard = pending[state.process_index :: state.num_processes]
        part = cache_path(output) if state.num_processes == 1 else part_path(output, state.process_index, "cots")
        bad = _generate(config, model, shard, part)
    if state.num_processes > 1:
        with atomic_file(part_path(output, state.process_index, "bad")) as handle:
            json.dump(bad, handle)
    state.wait_for_everyone()
    if not state.is_main_process:
        return _summary(output, rows=[], skipped=skipped, generated=0, reused=0, done={}, bad=bad)
    if state.num_processes > 1:
        bad = merge_parts(output, state.num_processes)
    written = read_cache(cache_path(output))
    kept, skipped = _complete_rows(rows, written, bad, skipped)
    write_output(output, layout, columns, kept, written)
    generated = len([item for item in pending if item in written])
    summary = _summary(output, rows=kept, skipped=skipped, generated=generated, reused=len(items) - len(pending),
                       done=written, bad=bad)
    _record_summary(meta_path(output), summary)
    return summary


# ----- model --------------------------------------------------------------------------------------------


def load_cot_model(config: CollectCotConfig) -> CotModel:
    """The processor, video settings, template and identity of ``--model`` (no weights loaded yet)."""
    from transformers import AutoProcessor

    source = resolve_model_source(config.model)
    folder = source.folder
    processor = AutoProcessor.from_pretrained(folder)
    if (folder / MANIFEST_NAME).is_file():
        changed = [f"--{name}" for name in PLAIN_MODEL_OPTIONS
                   if getattr(config, name) != CollectCotConfig.__dataclass_fields__[name].default]
        if changed:
            raise ConfigError(f"{', '.join(changed)} apply to a plain model; {config.model} is a DeScore checkpoint "
                              "with its own judge template and video settings")
        manifest = DeScoreManifest.read(folder)
        return CotModel(folder, processor, manifest.video_spec, manifest.scoring_template,
                        (manifest.reward_token_id,), checkpoint_identity(source), descore=True)
    factor = pixel_factor(processor)
    spec = VideoSpec(
        fps=config.video_fps, min_frames=config.video_min_frames, max_frames=config.video_max_frames,
        min_pixels=config.video_min_pixels if config.video_min_pixels is not None else 128 * factor * factor,
        max_pixels=config.video_max_pixels, pixel_factor=factor,
    )
    template = read_judge_template(config.template) if config.template else JUDGE_TEMPLATE
    identity = {"path": source.repo_id or str(folder.resolve()), "revision": source.commit,
                "fingerprint": weights_fingerprint(folder)}
    return CotModel(folder, processor, spec, template, (), identity, descore=False)


def build_cot_backend(config: CollectCotConfig, model: CotModel) -> CotBackend:
    settings = config.generation_settings()
    if settings.backend == "vllm":
        return build_backend(settings, processor=model.processor, model_path=model.folder,
                             suppress_token_ids=model.suppress_token_ids, seed=config.seed)
    from .scoring import default_device, default_dtype

    device = torch.device(config.device) if config.device is not None else default_device()
    dtype = default_dtype(config.dtype, device)
    if model.descore:
        from .modeling import DeScoreModel

        loaded = DeScoreModel.from_pretrained(model.folder, dtype=dtype, attn_implementation=config.attn_implementation)
        return build_backend(settings, model=loaded.to(device).eval(), device=device)
    from transformers import AutoModelForImageTextToText

    backbone = AutoModelForImageTextToText.from_pretrained(
        model.folder, dtype=dtype, attn_implementation=config.attn_implementation, use_safetensors=True
    )
    return build_backend(settings, processor=model.processor, backbone=backbone.to(device).eval(), device=device)


def run_settings(config: CollectCotConfig, model: CotModel, layout: str) -> dict[str, dict[str, Any]]:
    """What decides the CoTs (recorded beside the output; a re-run must match)."""
    return resolved_config({
        "model": model.identity,
        "judge": {"template": model.template, "layout": layout},
        "generation": config.recorded_generation(),
        "video": model.video_spec.to_dict(),
        "data": {"path": str(Path(config.data).resolve()), "sha256": file_sha256(config.data)},
    })


def check_earlier_run(output: Path, settings: dict[str, dict[str, Any]], *, overwrite: bool) -> None:
    """Refuse to add to an output written with other settings, or by something else."""
    files = [path for path in (output, cache_path(output), meta_path(output)) if path.exists()]
    if overwrite or not files:
        return
    record = read_record(meta_path(output))
    if record is None:
        raise RunMismatchError(f"{output}: {files[0].name} exists without {meta_path(output).name}; choose another "
                               "--output or pass --overwrite true")
    if record.get("job") != JOB:
        raise RunMismatchError(f"{meta_path(output)} is not a record of {JOB!r}; pass --overwrite true")
    differences = config_differences(record["config"], settings)
    if differences:
        raise RunMismatchError(
            f"{output} was collected with other settings; adding to it would mix two collections:\n  "
            + "\n  ".join(differences) + "\nChoose another --output, or pass --overwrite true to start afresh."
        )


# ----- data ---------------------------------------------------------------------------------------------


def read_pairs(path: Path) -> tuple[str, list[str], list[Row], list[tuple[int, str]]]:
    """(layout, columns, rows with their two items, (line, reason) of unreadable rows) of a preference file;
    labels and the rest are left to :func:`reward.data.read_preferences` when the output is trained on."""
    records = read_records(path)
    columns = list(records.columns)
    if {"videos", "problem"} <= set(columns):
        layout = "official"
    elif {"prompt", "video_a", "video_b"} <= set(columns):
        layout = "ours"
    else:
        raise DataError(f"{path}: columns {columns} are neither ours (prompt, video_a, video_b, label) nor the "
                        "official stage-1 CSV's (videos, problem, ...)")
    rows, skipped = [], list(records.problems)
    for line, values in records.rows:
        try:
            rows.append(Row(line, values, _items(layout, values, path.parent)))
        except _RowError as error:
            skipped.append((line, str(error)))
    return layout, columns, rows, skipped


class _RowError(ValueError):
    pass


def _items(layout: str, values: dict[str, Any], root: Path) -> tuple[Item, Item]:
    """The row's two CoTs to write; video paths resolved against the data file's folder."""
    if layout == "ours":
        prompt = str(values.get("prompt") or "").strip()
        if not prompt:
            raise _RowError("column 'prompt' is empty")
        instruction = None
    else:
        instruction = str(values.get("problem") or "")
        if not instruction.strip():
            raise _RowError("column 'problem' is empty")
        prompt = str(values.get("prompt") or "").strip() or instruction
    paths = [str(root / video.strip()) for video in _listed_videos(layout, values)]  # an absolute one stays itself
    return Item(paths[0], prompt, instruction), Item(paths[1], prompt, instruction)


def _listed_videos(layout: str, values: dict[str, Any]) -> tuple[str, str]:
    """The two video paths as the row gives them."""
    if layout == "ours":
        videos = (values.get("video_a"), values.get("video_b"))
    else:
        try:
            videos = ast.literal_eval(str(values.get("videos")))
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as error:
            raise _RowError(f"column 'videos' is not a list of two paths: {values.get('videos')!r}") from error
        if not (isinstance(videos, (list, tuple)) and len(videos) == 2):
            raise _RowError(f"column 'videos' must hold two paths, got {values.get('videos')!r}")
    for video in videos:
        if not isinstance(video, str) or not video.strip():
            raise _RowError(f"a video path is empty or not text: {video!r}")
    return videos[0], videos[1]


# ----- generation ---------------------------------------------------------------------------------------


def _generate(config: CollectCotConfig, model: CotModel, items: list[Item], part: Path) -> dict[str, str]:
    """Write the CoTs of ``items`` into ``part``, batch by batch; returns the bad videos with their reasons."""
    bad: dict[str, str] = {}
    readable = []
    for item in items:
        try:
            probe_video(item.video, limits=config.decode_limits(), spec=model.video_spec)
            readable.append(item)
        except VideoDecodeError as error:
            bad[item.video] = error.reason
    if not readable:
        return bad
    backend, settings = build_cot_backend(config, model), config.generation_settings()
    with part.open("a", encoding="utf-8") as handle:
        for number, start in enumerate(tqdm(range(0, len(readable), config.batch_size), desc="collecting CoTs")):
            batch = readable[start : start + config.batch_size]
            lines = _batch_lines(backend, settings, model, batch, seed=config.seed + number,
                                 limits=config.decode_limits(), bad=bad)
            append_lines(handle, lines)
    return bad


def _batch_lines(backend: CotBackend, settings: GenerationSettings, model: CotModel, batch: list[Item], *,
                 seed: int, limits: Any, bad: dict[str, str]) -> list[dict[str, Any]]:
    """The cache lines of one batch; a video that fails to load or does not fit is added to ``bad``."""
    loaded: list[tuple[Item, SampledVideo]] = []
    for item in batch:
        try:
            loaded.append((item, load_video(item.video, model.video_spec, limits=limits)))
        except VideoDecodeError as error:
            bad[item.video] = error.reason
    lines = []
    while loaded:
        judges = [judge_text(item.prompt, item.instruction, template=model.template) for item, _ in loaded]
        try:
            written = backend.generate(judges, [clip for _, clip in loaded], settings=settings, seed=seed)
        except RequestTooLongError as error:
            bad[error.video] = str(error)
            loaded = [(item, clip) for item, clip in loaded if clip.source != error.video]
            continue
        lines = [_cache_line(item, samples[0].text, samples[0].truncated) for (item, _), samples in zip(loaded, written)]
        break
    return lines


def _cache_line(item: Item, cot: str, truncated: bool) -> dict[str, Any]:
    parsed = parse_judge_answer(cot)
    return {"video": item.video, "prompt": item.prompt, "instruction": item.instruction, "cot": cot,
            "judge_scores": parsed.answer.dimensional_scores if parsed.answer else None,
            "parse_error": parsed.reason, "truncated": truncated}


# ----- output -------------------------------------------------------------------------------------------


def _complete_rows(rows: list[Row], written: dict[Item, dict[str, Any]], bad: dict[str, str],
                   skipped: list[tuple[int, str]]) -> tuple[list[Row], list[tuple[int, str]]]:
    """Rows whose two CoTs exist; the others are skipped with the reason."""
    kept, skipped = [], list(skipped)
    for row in rows:
        missing = [item.video for item in row.items if item not in written]
        if not missing:
            kept.append(row)
            continue
        reasons = "; ".join(f"video {video}: {bad.get(video, 'no CoT written')}" for video in dict.fromkeys(missing))
        skipped.append((row.line, reasons))
    return kept, sorted(skipped)


def write_output(output: Path, layout: str, columns: list[str], rows: list[Row], written: dict[Item, dict[str, Any]]) -> None:
    """The input's rows with their CoTs, in input order, written atomically (CSV or JSONL by the suffix)."""
    cot_columns = OFFICIAL_COLUMNS if layout == "official" else OURS_COLUMNS
    replaced = [column for column in (*cot_columns, *EXTRA_COLUMNS) if column in columns]
    if replaced:
        logger.warning("%s: the input's columns %s are replaced by the collected ones", output, replaced)
    header = [column for column in columns if column not in replaced] + [*cot_columns, *EXTRA_COLUMNS]
    records = []
    for row in rows:
        a, b = (written[item] for item in row.items)
        records.append({**row.values, **_video_columns(layout, row, output.parent),
                        cot_columns[0]: a["cot"], cot_columns[1]: b["cot"],
                        "judge_scores_a": _scores_text(a), "judge_scores_b": _scores_text(b),
                        "truncated_a": _flag(a["truncated"]), "truncated_b": _flag(b["truncated"])})
    with atomic_file(output) as handle:
        if output.suffix.lower() == ".jsonl":
            handle.writelines(json.dumps({key: record.get(key) for key in header}, ensure_ascii=False) + "\n"
                              for record in records)
            return
        writer = csv.DictWriter(handle, fieldnames=header, lineterminator="\n")
        writer.writeheader()
        writer.writerows({key: "" if record.get(key) is None else record.get(key) for key in header} for record in records)


def _video_columns(layout: str, row: Row, folder: Path) -> dict[str, str]:
    """The row's video paths as the output's reader resolves them: relative to the output's folder (they were
    relative to the input's), absolute ones unchanged."""
    listed = _listed_videos(layout, row.values)
    paths = [raw.strip() if Path(raw.strip()).is_absolute() else os.path.relpath(item.video, folder)
             for raw, item in zip(listed, row.items)]
    if layout == "official":
        return {"videos": str(paths)}
    return {"video_a": paths[0], "video_b": paths[1]}


def _scores_text(line: dict[str, Any]) -> str:
    return "" if line["judge_scores"] is None else json.dumps(line["judge_scores"], ensure_ascii=False)


def _flag(value: bool) -> str:
    return "true" if value else "false"


def _summary(output: Path, *, rows: list[Row], skipped: list[tuple[int, str]], generated: int, reused: int,
             done: dict[Item, dict[str, Any]], bad: dict[str, str]) -> CollectCotSummary:
    used = {item for row in rows for item in row.items}
    return CollectCotSummary(
        output=output,
        rows_written=len(rows),
        rows_skipped=tuple(skipped),
        generated=generated,
        reused=reused,
        truncated=sum(bool(done[item]["truncated"]) for item in used),
        parse_failures=sum(done[item]["judge_scores"] is None for item in used),
        bad_videos=tuple(sorted(bad.items())),
    )


def _record_summary(path: Path, summary: CollectCotSummary) -> None:
    """Add the summary to the settings record (its ``config`` part, which re-runs compare, is unchanged)."""
    record = read_record(path)
    record["summary"] = {
        "rows_written": summary.rows_written, "rows_skipped": [list(item) for item in summary.rows_skipped],
        "generated": summary.generated, "reused": summary.reused, "truncated": summary.truncated,
        "parse_failures": summary.parse_failures, "bad_videos": [list(item) for item in summary.bad_videos],
    }
    with atomic_file(path) as handle:
        handle.write(json.dumps(record, indent=2, sort_keys=True) + "\n")


def format_collect_report(summary: CollectCotSummary) -> str:
    """What ``descore reward collect-cot`` prints when it ends."""
    lines = [
        f"wrote {summary.rows_written} row(s) to {summary.output}; {len(summary.rows_skipped)} row(s) skipped",
        f"CoTs: {summary.generated} written now, {summary.reused} from an earlier run; {summary.truncated} truncated "
        f"(hit max_new_tokens), {summary.parse_failures} without a valid answer block",
    ]
    lines += [f"bad video {video}: {reason}" for video, reason in summary.bad_videos]
    return "\n".join(lines)
