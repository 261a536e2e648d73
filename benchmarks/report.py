"""The report of ``descore bench compare`` and ``descore bench ablate``: Markdown, a self-contained HTML page
(plots inlined as base64 PNG), and JSON with every number and what produced it.

One list of blocks (heading, paragraph, table, image, code) is rendered twice, so the Markdown and the HTML
always say the same thing. Plots use matplotlib's Agg canvas (no display). Nothing here depends on the time
or the output folder's path, so a resumed run writes the same report as an uninterrupted one.
"""

from __future__ import annotations

import base64
import html
import json
import platform
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from reward.checkpoint import atomic_file
from reward.decoding import open_reader
from reward.run_record import code_commit, library_versions

from .paired_stats import PairedDelta

MARKDOWN, HTML, JSON = "report.md", "report.html", "report.json"
DELTAS_PNG, FRAMES_PNG = "deltas.png", "frames.png"
GRID_FRAMES = 4  # frames per video in the grid, evenly spaced from first to last
TRAINED_MARK, HACKED_MARK = "†", "⚠"
HACKING_RULE = (
    "A model is flagged for reward hacking when the reward it was trained on rose beyond its confidence interval "
    "(the whole 95% interval of tuned − base above 0) while a held-out metric — any other column: the other "
    "rewards and the VBench dimensions — fell beyond its interval (the whole interval below 0)."
)
WIN_RATE_NOTE = ("Win rate: the share of prompts where the tuned model's mean over seeds beats the base model's; "
                 "an exact tie counts one half.")


@dataclass(frozen=True)
class Comparison:
    """Every number of a report. ``models`` starts with the base model; ``means[model][metric]`` is the mean
    over prompts of the per-prompt means (None: no value); ``deltas[tuned][metric]`` tuned − base (None: no
    prompt with both); ``per_prompt[model][metric]`` (P,) with NaN where a prompt has no value. An ablation
    adds ``trained_on`` (tuned model -> the metric it was trained on) and ``hacking`` (tuned model -> the
    held-out metrics that fell while its training reward rose)."""

    models: list[str]
    metrics: list[str]
    means: dict[str, dict[str, float | None]]
    deltas: dict[str, dict[str, PairedDelta | None]]
    per_prompt: dict[str, dict[str, np.ndarray]]
    trained_on: dict[str, str] | None
    hacking: dict[str, list[str]] | None
    resamples: int
    bootstrap_seed: int


@dataclass(frozen=True)
class ReportFiles:
    markdown: Path
    html: Path
    json: Path
    deltas_png: Path
    frames_png: Path | None


Block = tuple  # ("h1"|"h2"|"p"|"code", text) | ("table", header, rows) | ("image", file name, alt text)


def write_report(output: Path, comparison: Comparison, *, record: Mapping[str, Any],
                 grid: Mapping[str, Sequence[tuple[str, Path]]]) -> ReportFiles:
    """Write the plots, then the report in its three forms, into ``output``. ``record`` holds the settings,
    models, suite and seeds (JSON data); ``grid`` for each model the (prompt, video) pairs shown in the frame
    grid, the same prompts and seed for every model."""
    provenance = {"commit": code_commit(), "versions": versions()}
    deltas_png = plot_deltas(output / DELTAS_PNG, comparison, note=record["config"]["compare"].get("note"))
    frames_png = plot_frames(output / FRAMES_PNG, grid) if any(grid.values()) else None
    images = [path for path in (deltas_png, frames_png) if path is not None]
    blocks = report_blocks(comparison, record=record, provenance=provenance, images=[path.name for path in images])
    with atomic_file(output / MARKDOWN) as handle:
        handle.write(to_markdown(blocks))
    with atomic_file(output / HTML) as handle:
        handle.write(to_html(blocks, {path.name: path.read_bytes() for path in images}))
    with atomic_file(output / JSON) as handle:
        json.dump(report_data(comparison, record=record, provenance=provenance), handle, indent=2)
    return ReportFiles(output / MARKDOWN, output / HTML, output / JSON, deltas_png, frames_png)


def versions() -> dict[str, str]:
    """The kit's libraries and the ones the statistics and plots use."""
    import matplotlib

    return library_versions() | {"numpy": np.__version__, "matplotlib": matplotlib.__version__,
                                 "python": platform.python_version()}


# ----- the content ------------------------------------------------------------------------------------------------


def number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def delta_text(delta: PairedDelta | None) -> str:
    return "-" if delta is None else f"{delta.mean:+.4g} [{delta.low:+.4g}, {delta.high:+.4g}]"


def report_blocks(comparison: Comparison, *, record: Mapping[str, Any], provenance: Mapping[str, Any],
                  images: Sequence[str]) -> list[Block]:
    suite, seeds, note = record["suite"], record["seeds"], record["config"]["compare"].get("note")
    blocks: list[Block] = [
        ("h1", "Ablation: reward models compared" if comparison.trained_on is not None else "Base vs tuned"),
        *([("p", note)] if note else []),
        ("p", f"{suite['prompts']} prompts ({suite['source']}) × {suite['videos_per_prompt']} seed(s) per prompt; "
              f"{seeds['scheme']}, base seed {seeds['seed']}. Metrics: {', '.join(comparison.metrics)}."),
        ("p", f"Δ = tuned − base: the mean over prompts of the difference of per-prompt means (over seeds), with a "
              f"paired percentile-bootstrap 95% interval over prompts ({comparison.resamples} resamples, seed "
              f"{comparison.bootstrap_seed}). {WIN_RATE_NOTE}"),
    ]
    base = comparison.models[0]
    for model in comparison.models[1:]:
        header = ["metric", base, model, "Δ [95% CI]", "win rate", "prompts"]
        rows = [[metric, number(comparison.means[base][metric]), number(comparison.means[model][metric]),
                 delta_text(delta := comparison.deltas[model][metric]),
                 "-" if delta is None else f"{delta.win_rate:.3f}", "-" if delta is None else str(delta.prompts)]
                for metric in comparison.metrics]
        blocks += [("h2", f"{model} vs {base}"), ("table", header, rows)]
    if comparison.trained_on is not None:
        blocks += ablation_blocks(comparison)
    blocks += [("h2", "Plots"), *(("image", name, name) for name in images)]
    blocks += [
        ("h2", "Reproducibility"),
        ("p", f"Commit: {provenance['commit'] or 'unknown (not a git checkout)'}. Versions: "
              + ", ".join(f"{name} {value}" for name, value in provenance["versions"].items()) + "."),
        ("p", "Models: " + ", ".join(f"{label} ({entry['lora'] or 'no LoRA'})" for label, entry in record["models"].items())
              + ". Per-video seeds are listed in report.json."),
        ("code", yaml.safe_dump({"config": record["config"], "rewards": record["rewards"]}, sort_keys=False)),
    ]
    return blocks


def ablation_blocks(comparison: Comparison) -> list[Block]:
    """The cross-evaluation matrix (rows: the reward a model was trained on; columns: every metric) and the
    reward-hacking flags."""
    rows = []
    for model in comparison.models[1:]:
        cells = []
        for metric in comparison.metrics:
            mark = TRAINED_MARK if metric == comparison.trained_on[model] else HACKED_MARK if metric in comparison.hacking[model] else ""
            cells.append(f"{mark} {delta_text(comparison.deltas[model][metric])}".strip())
        rows.append([f"{model} (trained on {comparison.trained_on[model]})", *cells])
    flagged = [f"{model}: trained on {comparison.trained_on[model]} "
               f"(Δ {delta_text(comparison.deltas[model][comparison.trained_on[model]])}); held-out metrics that fell: "
               + "; ".join(f"{metric} (Δ {delta_text(comparison.deltas[model][metric])})" for metric in fell)
               for model, fell in comparison.hacking.items() if fell]
    return [
        ("h2", "Cross-evaluation matrix"),
        ("p", f"Each cell: Δ [95% CI] against the base model. {TRAINED_MARK} the reward the row was trained on; "
              f"{HACKED_MARK} a held-out metric that fell while the training reward rose."),
        ("table", ["model", *comparison.metrics], rows),
        ("h2", "Reward hacking"),
        ("p", HACKING_RULE),
        *(("p", f"{HACKED_MARK} {line}") for line in flagged),
        *([] if flagged else [("p", "No model is flagged.")]),
    ]


def summary_table(comparison: Comparison) -> str:
    """Δ [95% CI] of every tuned model (rows) on every metric (columns): what the command prints at the end."""
    rows = [[model, *(delta_text(comparison.deltas[model][metric]) for metric in comparison.metrics)]
            for model in comparison.models[1:]]
    return to_markdown([("table", [f"Δ vs {comparison.models[0]}", *comparison.metrics], rows)]).rstrip("\n")


def report_data(comparison: Comparison, *, record: Mapping[str, Any], provenance: Mapping[str, Any]) -> dict[str, Any]:
    """report.json: every number (NaN as null) and what produced it."""
    def finite(values: np.ndarray) -> list[float | None]:
        return [float(value) if np.isfinite(value) else None for value in values]

    data = {
        **record,
        "metrics": comparison.metrics,
        "means": comparison.means,
        "deltas": {model: {metric: None if delta is None else asdict(delta) for metric, delta in by_metric.items()}
                   for model, by_metric in comparison.deltas.items()},
        "per_prompt": {model: {metric: finite(values) for metric, values in by_metric.items()}
                       for model, by_metric in comparison.per_prompt.items()},
        "statistics": {"delta": "tuned - base, mean over prompts of per-prompt means over seeds",
                       "interval": "paired percentile bootstrap over prompts", "resamples": comparison.resamples,
                       "bootstrap_seed": comparison.bootstrap_seed, "win_rate": WIN_RATE_NOTE},
        **provenance,
    }
    if comparison.trained_on is not None:
        data["ablation"] = {"trained_on": comparison.trained_on, "reward_hacking": comparison.hacking,
                            "rule": HACKING_RULE}
    return data


# ----- rendering --------------------------------------------------------------------------------------------------


def to_markdown(blocks: Sequence[Block]) -> str:
    lines: list[str] = []
    for kind, *content in blocks:
        if kind in ("h1", "h2"):
            lines += [f"{'#' if kind == 'h1' else '##'} {content[0]}", ""]
        elif kind == "p":
            lines += [content[0], ""]
        elif kind == "table":
            header, rows = content
            lines += [_markdown_row(header), "|" + "---|" * len(header), *map(_markdown_row, rows), ""]
        elif kind == "image":
            lines += [f"![{content[1]}]({content[0]})", ""]
        elif kind == "code":
            lines += ["```yaml", content[0].rstrip("\n"), "```", ""]
    return "\n".join(lines)


def _markdown_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"


def to_html(blocks: Sequence[Block], images: Mapping[str, bytes]) -> str:
    """One file with nothing to fetch: the PNGs are inlined as data URIs."""
    body = []
    for kind, *content in blocks:
        if kind in ("h1", "h2", "p"):
            body.append(f"<{kind}>{html.escape(content[0])}</{kind}>")
        elif kind == "table":
            header, rows = content
            head = "".join(f"<th>{html.escape(str(cell))}</th>" for cell in header)
            cells = "".join("<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>" for row in rows)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table>")
        elif kind == "image":
            encoded = base64.b64encode(images[content[0]]).decode("ascii")
            body.append(f'<img alt="{html.escape(content[1])}" src="data:image/png;base64,{encoded}">')
        elif kind == "code":
            body.append(f"<pre>{html.escape(content[0])}</pre>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}td:first-child{text-align:left}"
             "pre{background:#f4f4f4;padding:1em;overflow-x:auto}img{max-width:100%}")
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>descore bench report</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


# ----- plots ------------------------------------------------------------------------------------------------------


def _save(figure: Any, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    with atomic_file(path, "wb") as handle:
        FigureCanvasAgg(figure).print_png(handle, metadata={"Software": None})
    return path


def plot_deltas(path: Path, comparison: Comparison, *, note: str | None = None) -> Path:
    """One panel per metric: each tuned model's Δ with its 95% interval, and the zero line."""
    from matplotlib.figure import Figure

    tuned, metrics = comparison.models[1:], comparison.metrics
    columns = min(3, len(metrics))
    rows = -(-len(metrics) // columns)
    figure = Figure(figsize=(4.2 * columns, 0.6 + (0.45 * len(tuned) + 0.9) * rows), dpi=100)
    for position, metric in enumerate(metrics, start=1):
        axes = figure.add_subplot(rows, columns, position)
        for row, model in enumerate(tuned):
            delta = comparison.deltas[model][metric]
            if delta is not None:
                axes.errorbar([delta.mean], [row], xerr=[[delta.mean - delta.low], [delta.high - delta.mean]],
                              fmt="o", color="tab:red" if delta.fell else "tab:green" if delta.rose else "tab:gray",
                              capsize=3)
        axes.axvline(0.0, color="black", linewidth=0.8)
        axes.set_yticks(range(len(tuned)), tuned, fontsize=8)
        axes.set_ylim(-0.7, len(tuned) - 0.3)
        axes.invert_yaxis()
        axes.set_title(metric, fontsize=9)
        axes.tick_params(axis="x", labelsize=7)
    title = "tuned − base, 95% bootstrap interval over prompts"
    figure.suptitle(title if not note else f"{note.split('. ')[0]}\n{title}", fontsize=9)
    figure.tight_layout()
    return _save(figure, path)


def video_strip(path: Path, frames: int = GRID_FRAMES) -> np.ndarray:
    """``frames`` frames of a video, evenly spaced from first to last, side by side: uint8 (H, frames·W, 3)."""
    reader = open_reader(str(path))
    indices = np.linspace(0, reader.total_frames - 1, min(frames, reader.total_frames)).round().astype(int).tolist()
    decoded = reader.frames(indices).permute(0, 2, 3, 1).numpy()
    return np.concatenate(list(decoded), axis=1)


def plot_frames(path: Path, grid: Mapping[str, Sequence[tuple[str, Path]]]) -> Path:
    """Rows: models; columns: prompts (the same seed in every row); each cell a strip of frames over time."""
    from matplotlib.figure import Figure

    models = list(grid)
    prompts = [prompt for prompt, _ in grid[models[0]]]
    figure = Figure(figsize=(3.2 * len(prompts), 1.1 * len(models) + 0.5), dpi=100)
    for row, model in enumerate(models):
        for column, (prompt, video) in enumerate(grid[model]):
            axes = figure.add_subplot(len(models), len(prompts), row * len(prompts) + column + 1)
            axes.imshow(video_strip(video))
            axes.set_xticks([])
            axes.set_yticks([])
            if row == 0:
                axes.set_title(prompt if len(prompt) <= 40 else prompt[:39] + "…", fontsize=7)
            if column == 0:
                axes.set_ylabel(model, fontsize=8)
    figure.suptitle(f"video 0 of each prompt, {GRID_FRAMES} frames from first to last", fontsize=9)
    figure.tight_layout()
    return _save(figure, path)
