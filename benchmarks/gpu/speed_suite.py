"""The speed switches on one GPU in one command: Wan steps eager vs compiled vs each attention backend, the Wan 14B
configuration on one GPU (plain and under FSDP2 on one rank), and DeScore stage 1 per attention implementation.

    python -m benchmarks.gpu.speed_suite --out results/speed_suite --quick   # one H100/H200, designed for ~8 min
    python -m benchmarks.gpu.speed_suite --out /tmp/speed_suite --tiny --device cpu   # CPU smoke test of every path

Parts, in order (each survives a failure of another: the error is recorded and the next part runs):

1. ``wan`` — Wan-2.1 1.3B, random init, the kit's ``WanPolicy`` (LoRA r32/α64, float32 LoRA, bf16 base,
   activation checkpointing) at 33 and 81 frames 480×832: rollout step, GRPO train step, Flow-DPO micro-step and
   VAE decode (``wan_rl_steps.units``), for each variant: ``eager`` (PyTorch picks the SDPA kernel per call), one
   pinned SDPA backend each (``WanPolicy.set_attention``: cudnn_attention, flash_attention, efficient_attention; math
   only with --tiny, since its T×T scores at 81 frames — 32,760² × 24 heads·batch × 2 bytes ≈ 51 GB per
   layer — do not fit), and ``compiled`` (``compile_transformer_blocks``, the code path of
   ``PolicyConfig.compile_transformer``: diffusers' regional compile after LoRA, fullgraph, static shapes). The
   variants change only the transformer, so the VAE decode is measured once, in ``eager``. ``compiled`` gets a
   fresh build, and so does the variant after it (compilation works in place and cannot be undone); each row
   counts the graphs dynamo captured during its warm-up and during its timed calls (the second should be 0: no
   recompiles in steady state). A backend this GPU/torch lacks is ``unsupported``, an out-of-memory ``OOM``.
2. ``descore`` — ``descore_stage1`` at Qwen3-VL-8B scale: the stage-1 train step and no-CoT scoring (batch 1 and
   8) per ``attn_implementation`` (sdpa, eager, and flash_attention_2 where the package is importable), on one
   random checkpoint.
3. ``wan14b`` — the Wan 14B configuration (40 layers, 40 heads × 128, FFN 13,824, text 4096) with LoRA and
   activation checkpointing: rollout step and GRPO train step at 33 frames (then 81 while time is left); then
   the same transformer sharded as ``configs/accelerate/fsdp_wan_8gpu.yaml`` makes accelerate shard it —
   FSDP2 ``fully_shard`` on every ``WanTransformerBlock`` and on the root, reshard after forward, bf16
   parameters/reductions (accelerate's ``MixedPrecisionPolicy`` for ``mixed_precision: bf16``) — in a
   one-process group (world size 1). One rank runs FSDP's real code path (DTensor parameters, all-gather and
   reduce-scatter hooks, casts, with checkpointing and peft's adapter switch) and measures its overhead; it
   does not measure 8-rank memory (each rank would hold 1/8 of the base weights) or communication.

4. ``optimizer`` — one AdamW step on the LoRA of Wan 1.3B and 14B (rank 32), foreach kernel vs fused kernel
   (``RunConfig.fused_adamw``), as ``benchmarks/optimizer_kernels.py`` measures it; a few seconds.

Measured numbers: median of ``--repeats`` calls after ``--warmup`` untimed ones (``--quick``: 1 after 1), peak
``torch.cuda.max_memory_allocated`` per row, speed-up = eager seconds / variant seconds. MFU = useful FLOPs /
seconds / the GPU's dense bf16 peak (989 TFLOP/s for H100 SXM and H200; ``--peak_tflops`` overrides), with
useful FLOPs per transformer forward over T video tokens = 2·P·T + layers × (4·T²·d self-attention + 4·T·512·d
cross-attention), P the base parameters and d the width; a gradient forward counts ×3 (forward + backward;
checkpointing's recomputation is not useful work) and CFG doubles the batch.

Time budget (``--budget_s``, default 480 s), designed from the H200 units in BENCHMARKS.md (estimates, not
measurements, for --quick: each row runs twice): the parts share it 6 : 1.5 : 2.5 : 0.2 (wan ~290 s, descore ~70 s,
wan14b ~120 s, optimizer ~10 s) and the Wan variants share theirs by expected cost — eager 1.5 (build ~10 s + 33 frames ~12 s +
81 frames ~37 s with decode), compiled 3 (~32 s of steps plus compiling a few graphs per shape), cuDNN 1
(~40 s), flash 1.2 (~50 s), memory-efficient 2 (~85 s); DeScore: random 8B checkpoint ~20 s, then ~15 s per
implementation; 14B: ~55 s per 33-frame pass, 81 frames only if time is left. Time one share leaves unused
rolls on; a row that would start after its share is ``skipped`` (a started row is never cut), so an overrun —
compilation is the unknown — costs the last variants (memory-efficient first), not the run. Rerun those alone
with ``--parts wan --variants ...``. The JSON (``speed_suite.json``) and the markdown (``speed_suite.md``) in ``--out``
are rewritten after each row, so a run cut short (or killed) keeps what it measured.
"""

from __future__ import annotations

import logging
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import HfArgumentParser

from generator_rl.policy import VideoShape, WanPolicy, attention_backend, compile_transformer_blocks
from reward.errors import ConfigError

from .. import optimizer_kernels
from . import descore_stage1, wan_rl_steps
from .harness import (
    Deadline, cell, dense_bf16_peak, machine_name, markdown_table, release_memory, versions, write_json,
)

logger = logging.getLogger(__name__)

PARTS = ("wan", "descore", "wan14b", "optimizer")
# Shares of the time budget: parts, and Wan variants by their expected cost on an H200 (compiled: compilation).
PART_SHARES = {"wan": 6.0, "descore": 1.5, "wan14b": 2.5, "optimizer": 0.2}
BACKENDS = ("cudnn_attention", "flash_attention", "efficient_attention")
VARIANTS = ("eager", "compiled", *BACKENDS, "math")
VARIANT_SHARES = {"eager": 1.5, "compiled": 3.0, "cudnn_attention": 1.0, "flash_attention": 1.2,
                  "efficient_attention": 2.0, "math": 1.0}
MFU_FORMULA = (
    "useful FLOPs / s / dense bf16 peak; per transformer forward over T video tokens: 2·P·T + layers·(4·T²·d + "
    "4·T·512·d), x3 with gradient (forward + backward, recomputation not counted), x2 batch with CFG"
)
SKIPPED = "skipped"
# transformers' attn_implementation values for Qwen3-VL.
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")


@dataclass
class SuiteConfig:
    out: str = field(metadata={"help": "Folder for speed_suite.json and speed_suite.md."})
    device: str = field(default="cuda", metadata={"help": "Torch device to benchmark on."})
    tiny: bool = field(default=False, metadata={"help": "Tiny models, 32x32 frames, float32: a CPU smoke test."})
    quick: bool = field(
        default=False, metadata={"help": "1 timed call per Wan row, 2 DeScore train steps and scoring repeats."}
    )
    parts: list[str] = field(default_factory=lambda: list(PARTS), metadata={"help": f"Parts to run, from {PARTS}."})
    budget_s: float = field(default=480.0, metadata={"help": "Wall-clock budget; rows past their share are skipped."})
    frames: list[int] | None = field(default=None, metadata={"help": "Wan 1.3B frame counts (33 81; tiny 5 9)."})
    frames_14b: list[int] | None = field(default=None, metadata={"help": "Wan 14B frame counts (33 81; tiny 5)."})
    variants: list[str] | None = field(
        default=None, metadata={"help": f"Wan variants from {VARIANTS} (default all; math only with --tiny)."}
    )
    units: list[str] = field(
        default_factory=lambda: list(wan_rl_steps.UNITS), metadata={"help": f"Wan units, from {wan_rl_steps.UNITS}."}
    )
    repeats: int | None = field(default=None, metadata={"help": "Timed calls per Wan row (2; --quick 1)."})
    warmup: int = field(default=1, metadata={"help": "Untimed calls before the timed ones (compilation included)."})
    fsdp: bool = field(default=True, metadata={"help": "Also run the 14B under FSDP2 on one rank."})
    attn_implementations: list[str] | None = field(
        default=None, metadata={"help": "DeScore attn_implementation values (sdpa eager [flash_attention_2])."}
    )
    peak_tflops: float | None = field(
        default=None, metadata={"help": "Dense bf16 peak for MFU (default: from the GPU's name; none on CPU)."}
    )

    def __post_init__(self) -> None:
        self.frames = self.frames or ([5, 9] if self.tiny else [33, 81])
        self.frames_14b = self.frames_14b or ([5] if self.tiny else [33, 81])
        self.variants = self.variants or [name for name in VARIANTS if self.tiny or name != "math"]
        self.repeats = self.repeats or (1 if self.quick else 2)
        self.attn_implementations = self.attn_implementations or default_attn_implementations()
        for name, given, known in (("parts", self.parts, PARTS), ("variants", self.variants, VARIANTS),
                                   ("units", self.units, wan_rl_steps.UNITS),
                                   ("attn_implementations", self.attn_implementations, ATTN_IMPLEMENTATIONS)):
            if set(given) - set(known):
                raise ConfigError(f"unknown {name} {sorted(set(given) - set(known))}; choose from {known}")
        if any(count < 1 or (count - 1) % 4 for count in (*self.frames, *self.frames_14b)):
            raise ConfigError(f"frame counts must be 4k+1 (Wan's VAE); got {self.frames} and {self.frames_14b}")
        if self.repeats < 1 or self.warmup < 0 or self.budget_s <= 0:
            raise ConfigError(f"repeats must be >= 1, warmup >= 0 and budget_s > 0; got {self}")
        device = torch.device(self.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device {self.device!r} was asked for but CUDA is not available; use --device cpu")
        if device.type != "cuda" and not self.tiny:
            raise ConfigError("the full scale needs a GPU; on CPU pass --tiny")

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if torch.device(self.device).type == "cuda" else torch.float32

    def shape(self, frames: int) -> VideoShape:
        return VideoShape(32, 32, frames) if self.tiny else VideoShape(480, 832, frames)


def default_attn_implementations() -> list[str]:
    """sdpa and eager, plus flash_attention_2 where the flash-attn package is importable."""
    from transformers.utils import is_flash_attn_2_available

    return ["sdpa", "eager", *(["flash_attention_2"] if is_flash_attn_2_available() else [])]


def shares(weights: dict[str, float], deadline: Deadline) -> Iterator[tuple[str, Deadline]]:
    """Each name with its own deadline, handed out when it starts: the time left split by the weights of the names
    still to come, so time one leaves unused rolls on to the next."""
    remaining = dict(weights)
    for name, weight in weights.items():
        total = sum(remaining.values())
        remaining.pop(name)
        yield name, Deadline(max(0.0, deadline.left()) * weight / total)


@dataclass
class Report:
    """Everything the run measured, as written to speed_suite.json."""

    machine: str
    date: str
    versions: dict[str, str]
    config: dict[str, Any]
    peak_tflops: float | None
    mfu_formula: str = MFU_FORMULA
    part_seconds: dict[str, float] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


# ----- Wan rows --------------------------------------------------------------------------------------------


def backend_problem(name: str, device: torch.device, dtype: torch.dtype, head_dim: int) -> str | None:
    """Why the SDPA backend ``name`` cannot run attention of this head size here, or None when it can."""
    query = torch.randn(1, 2, 64, head_dim, device=device, dtype=dtype)
    try:
        with sdpa_kernel(SDPBackend.__members__[attention_backend(name).upper()]):
            torch.nn.functional.scaled_dot_product_attention(query, query, query)
    except RuntimeError as error:
        return str(error).splitlines()[0]
    return None


def wan_rows(
    policy: WanPolicy, params: int, config: SuiteConfig, *, part: str, variant: str, frames: Sequence[int],
    units: Sequence[str], deadline: Deadline, peak_tflops: float | None, repeats: int,
) -> Iterator[dict[str, Any]]:
    """One row per (frames, unit): measured, or skipped once ``deadline`` has passed."""
    device = torch.device(config.device)
    for count in frames:
        shape = config.shape(count)
        measured = wan_rl_steps.units(policy, params, shape, device)
        tokens = wan_rl_steps.video_tokens(policy, shape)
        for key in units:
            row = {"part": part, "variant": variant, "frames": count, "tokens": tokens,
                   "measurement": measured[key].name, "unit": key}
            if deadline.passed:
                yield row | {"status": SKIPPED, "error": "time budget"}
                continue
            yield row | wan_rl_steps.run_unit(measured[key], device, repeats=repeats,
                                              warmup=config.warmup, peak_tflops=peak_tflops)


def failed_rows(config: SuiteConfig, *, part: str, variant: str, frames: Sequence[int], units: Sequence[str],
                status: str, error: str) -> list[dict[str, Any]]:
    """Rows of a variant that did not run (``unsupported`` backend, or an ``error`` while building it)."""
    return [{"part": part, "variant": variant, "frames": count, "measurement": wan_rl_steps.UNIT_NAMES[key],
             "unit": key, "status": status, "error": error} for count in frames for key in units]


def wan_part(config: SuiteConfig, report: Report, deadline: Deadline, save: Callable[[], None]) -> None:
    """The 1.3B: each variant's rows in the order given; compilation works in place and cannot be undone, so
    ``compiled`` gets a fresh build, and so does the variant after it."""
    device = torch.device(config.device)
    policy, compiled = None, False
    for variant, share in shares({name: VARIANT_SHARES[name] for name in config.variants}, deadline):
        units = [key for key in config.units if variant == "eager" or key != "decode"]
        if policy is not None and (variant == "compiled" or compiled):
            policy, compiled = None, False
            release_memory(device)
        try:
            if policy is None:
                policy, params = wan_rl_steps.build_policy(config.tiny, device, config.dtype)
            if variant == "compiled":
                compiled = True  # set first: a compilation that fails half-way has still changed blocks
                policy.compile_baseline = compile_transformer_blocks(policy.transformer)
            elif variant != "eager":
                problem = backend_problem(variant, device, config.dtype, policy.transformer.config.attention_head_dim)
                if problem is not None:
                    report.rows += failed_rows(config, part="wan", variant=variant, frames=config.frames, units=units,
                                               status="unsupported", error=problem)
                    continue
            policy.set_attention(None if variant in ("eager", "compiled") else variant)
            for row in wan_rows(policy, params, config, part="wan", variant=variant, frames=config.frames,
                                units=units, deadline=share, peak_tflops=report.peak_tflops, repeats=config.repeats):
                report.rows.append(row)
                save()
            if variant == "compiled":
                report.notes.append(f"wan compiled: {policy.recompiles} recompiles after the first compile "
                                    "(WanPolicy.recompiles: each gradient mode, adapter switch and shape compiles "
                                    "once)")
        except Exception as error:  # one variant's failure (a compile error) must not cost the others
            logger.exception("wan variant %r failed", variant)
            report.errors.append(f"wan {variant}: {type(error).__name__}: {error}")
            done = {(row["frames"], row["unit"]) for row in report.rows
                    if row["part"] == "wan" and row["variant"] == variant}
            missing = failed_rows(config, part="wan", variant=variant, frames=config.frames, units=units,
                                  status="error", error=f"{type(error).__name__}: {error}")
            report.rows += [row for row in missing if (row["frames"], row["unit"]) not in done]
        save()


# ----- Wan 14B ---------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def shard_like_accelerate(policy: WanPolicy, dtype: torch.dtype) -> None:
    """FSDP2 as accelerate applies ``fsdp_wan_8gpu.yaml``: ``fully_shard`` per ``WanTransformerBlock``, then the
    root; parameters gathered and gradients reduced in ``dtype`` when it is not float32 (mixed_precision bf16)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    precision = MixedPrecisionPolicy() if dtype == torch.float32 else MixedPrecisionPolicy(
        param_dtype=dtype, reduce_dtype=dtype, output_dtype=dtype)
    for block in policy.transformer.blocks:
        fully_shard(block, mp_policy=precision, reshard_after_forward=True)
    fully_shard(policy.transformer, mp_policy=precision, reshard_after_forward=True)


def wan14b_part(config: SuiteConfig, report: Report, deadline: Deadline, save: Callable[[], None]) -> None:
    """The 14B configuration: rollout + GRPO step per frame count, then the same under FSDP2 on one rank."""
    import torch.distributed as dist

    device = torch.device(config.device)
    transformer = wan_rl_steps.TINY_14B if config.tiny else wan_rl_steps.WAN_14B
    policy, params = wan_rl_steps.build_policy(config.tiny, device, config.dtype, transformer)
    report.notes.append(f"wan14b: {params:,} base transformer parameters")
    variants = {"LoRA + checkpointing": 1.0, **({"FSDP2, 1 rank": 1.0} if config.fsdp else {})}
    for variant, share in shares(variants, deadline):
        try:
            if variant.startswith("FSDP2"):
                dist.init_process_group("nccl" if device.type == "cuda" else "gloo", world_size=1, rank=0,
                                        init_method=f"tcp://127.0.0.1:{free_port()}")
                shard_like_accelerate(policy, config.dtype)
            for row in wan_rows(policy, params, config, part="wan14b", variant=variant, frames=config.frames_14b,
                                units=("rollout", "grpo"), deadline=share, peak_tflops=report.peak_tflops, repeats=1):
                report.rows.append(row)
                save()
        except Exception as error:  # the plain run's failure must not cost the FSDP one, nor the reverse
            logger.exception("wan14b variant %r failed", variant)
            report.errors.append(f"wan14b {variant}: {type(error).__name__}: {error}")
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
        save()


# ----- AdamW kernels ---------------------------------------------------------------------------------------


def optimizer_part(config: SuiteConfig, report: Report, deadline: Deadline, save: Callable[[], None]) -> None:
    """One AdamW step on the Wan LoRA (1.3B and 14B shapes, rank 32; rank 4 with --tiny): foreach, then fused."""
    device = torch.device(config.device)
    for model in optimizer_kernels.WAN:
        shapes = optimizer_kernels.lora_shapes(model, 4 if config.tiny else 32)
        for variant in ("foreach", "fused"):
            row = {"part": "optimizer", "variant": variant, "measurement": f"AdamW step, Wan {model} LoRA",
                   "unit": "adamw"}
            if deadline.passed:
                report.rows.append(row | {"status": SKIPPED, "error": "time budget"})
                continue
            _, seconds = optimizer_kernels.stepped(shapes, fused=variant == "fused", steps=4, device=device)
            report.rows.append(row | {"seconds": statistics.median(seconds[1:]), "status": "ok"})
            save()
        release_memory(device)


# ----- DeScore ---------------------------------------------------------------------------------------------


def descore_part(config: SuiteConfig, report: Report, deadline: Deadline, save: Callable[[], None]) -> None:
    """Stage-1 train step and no-CoT scoring per attn_implementation, on one saved random checkpoint."""
    device = torch.device(config.device)
    bench = descore_stage1.BenchmarkConfig(
        device=config.device, tiny=config.tiny, cot=False, steps=2 if config.quick else None,
        repeats=2 if config.quick else 3,
    )
    with tempfile.TemporaryDirectory(prefix="descore-bench-") as scratch:
        directory = descore_stage1.save_random_backbone(Path(scratch), bench.scale, device=device, dtype=bench.dtype)
        release_memory(device)
        for attn, share in shares({name: 1.0 for name in config.attn_implementations}, deadline):
            if share.passed:
                report.rows.append({"part": "descore", "variant": attn, "measurement": "all", "status": SKIPPED,
                                    "error": "time budget"})
                continue
            result = descore_stage1.new_report(replace(bench, attn=attn))
            descore_stage1.run_parts(directory, replace(bench, attn=attn), result)
            report.rows += [descore_row(attn, measurement) for measurement in result.measurements]
            failures = [{"part": "descore", "variant": attn, "measurement": error.split(":")[0],
                         "status": attn_status(error), "error": error} for error in result.errors]
            report.rows += failures
            report.errors += [f"descore {attn}: {row['error']}" for row in failures if row["status"] == "error"]
            save()


def descore_row(attn: str, measurement: descore_stage1.Measurement) -> dict[str, Any]:
    return {"part": "descore", "variant": attn, "measurement": f"{measurement.name}, {measurement.videos} videos",
            "unit": measurement.name, "tokens": measurement.tokens, "seconds": measurement.seconds,
            "peak_gib": measurement.peak_memory_gib, "videos_per_s": measurement.videos_per_s,
            "status": measurement.status}


def attn_status(error: str) -> str:
    """A part that failed because transformers refuses the implementation here is ``unsupported``."""
    return "unsupported" if "attn_implementation" in error or "flash_attn" in error else "error"


# ----- report ----------------------------------------------------------------------------------------------


def with_speedups(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row with ``speedup``: its baseline's seconds / its seconds (baseline: Wan ``eager``, DeScore ``sdpa``,
    the 14B unsharded run)."""
    baselines = {"wan": "eager", "descore": "sdpa", "wan14b": "LoRA + checkpointing", "optimizer": "foreach"}
    reference = {(row["part"], row.get("frames"), row["measurement"]): row.get("seconds")
                 for row in rows if row["variant"] == baselines[row["part"]]}
    result = []
    for row in rows:
        base = reference.get((row["part"], row.get("frames"), row["measurement"]))
        seconds = row.get("seconds")
        result.append(row | {"speedup": base / seconds if base and seconds else None})
    return result


def markdown(report: Report) -> str:
    """The table to paste into BENCHMARKS.md, after the machine, versions, command and MFU formula."""
    rows = with_speedups(report.rows)
    lines = [f"### Speed switches on {report.machine}, {report.date}", "",
             f"- versions: {', '.join(f'{k} {v}' for k, v in report.versions.items())}",
             f"- command: `python -m benchmarks.gpu.speed_suite {' '.join(report.config['argv'])}`",
             f"- MFU: {report.mfu_formula}; peak {cell(report.peak_tflops, 'g')} TFLOP/s",
             f"- part seconds: {', '.join(f'{k} {v:.0f}' for k, v in report.part_seconds.items())}", ""]
    header = ["part", "variant", "frames", "measurement", "s", "x baseline", "peak GiB", "MFU", "graphs warm-up/timed",
              "status"]
    table = [[row["part"], row["variant"], cell(row.get("frames")), row["measurement"], cell(row.get("seconds"), ".3f"),
              cell(row["speedup"], ".2f"), cell(row.get("peak_gib"), ".1f"), cell(row.get("mfu"), ".1%"),
              f"{cell(row.get('graphs_warmup'))}/{cell(row.get('graphs_timed'))}",
              row["status"] + (f" ({row['error'][:80]})" if row.get("error") else "")] for row in rows]
    numeric = [False, False, True, False, True, True, True, True, True, False]
    lines.append(markdown_table(header, table, numeric=numeric))
    lines += [f"\n{note}" for note in report.notes] + [f"\n**error** {error}" for error in report.errors]
    return "\n".join(lines)


def save_report(report: Report, out: Path) -> None:
    data = asdict(report) | {"rows": with_speedups(report.rows)}
    write_json(data, out / "speed_suite.json")
    (out / "speed_suite.md").write_text(markdown(report) + "\n")


def run(config: SuiteConfig, argv: Sequence[str] = ()) -> Report:
    """Each part in order within its share of the budget; a part's failure is recorded and the next one runs."""
    device = torch.device(config.device)
    machine = machine_name(device)
    report = Report(
        machine=machine, date=datetime.now(timezone.utc).isoformat(timespec="seconds"), versions=versions(),
        config=asdict(config) | {"argv": list(argv)},
        peak_tflops=config.peak_tflops if config.peak_tflops is not None else dense_bf16_peak(machine),
    )
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    save = lambda: save_report(report, out)  # noqa: E731 - rewritten after each row
    parts = {"wan": wan_part, "descore": descore_part, "wan14b": wan14b_part, "optimizer": optimizer_part}
    total = Deadline(config.budget_s)
    for name, share in shares({name: PART_SHARES[name] for name in config.parts}, total):
        started = time.monotonic()
        if share.passed:  # not even its model is built
            report.rows.append({"part": name, "variant": "all", "measurement": "all", "status": SKIPPED,
                                "error": "time budget"})
        else:
            try:
                parts[name](config, report, share, save)
            # One failed part must not cost the other parts' numbers on a one-shot GPU lease.
            except Exception as error:
                logger.exception("part %r failed", name)
                report.errors.append(f"{name}: {type(error).__name__}: {error}")
        report.part_seconds[name] = time.monotonic() - started
        release_memory(device)
        save()
    return report


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    (config,) = HfArgumentParser(SuiteConfig).parse_args_into_dataclasses(args=argv)
    report = run(config, argv)
    print(markdown(report))
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
