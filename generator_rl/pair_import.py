"""Given preference pairs (human-labelled, or ranked by another model) encoded into a Flow-DPO pair store.

Offline Flow-DPO (``FlowDpoConfig.pairs``) trains on pairs of existing videos instead of sampling and ranking
its own. A pair file is any layout :func:`reward.data.read_preferences` reads (ours: ``prompt, video_a,
video_b, label``; VideoGen-RewardBench: ``path_A, path_B, prompt, Overall``), relative video paths resolving
against the file's folder. The preferred video is the winner, the other the loser; ties are skipped and counted.

Every video is decoded once, at Wan's 16 fps (:func:`training_frames`: the first ``num_frames`` frames of the
16 fps timeline from t = 0, resized to cover ``height`` x ``width`` and centre-cropped), and encoded with the
VAE (:meth:`WanPolicy.encode`, the latent distribution's mode) into round 0 of the pair store. A clip too short
for ``num_frames`` frames at 16 fps is refused like a corrupt one — padding would teach frozen endings. A row
whose video is missing, corrupt or too short is logged with its line, the video and the error, and skipped; the
counts come back as :class:`PairImport`.

A stored pair is keyed by its row: ``PairRecord.prompt_index`` is the row's line in the pair file (the header
is line 1), so a re-run skips the rows already stored. Imported pairs have no reward: ``winner_reward`` and
``loser_reward`` are NaN (the preference is the file's label, and it decided which side is the winner).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from torchvision.transforms import InterpolationMode
from torchvision.transforms.functional import center_crop, resize

from reward.data import PreferenceData, PreferencePair, read_preferences
from reward.decoding import open_reader
from reward.errors import ConfigError, DataError, VideoDecodeError
from reward.run_record import file_sha256
from reward.video import DecodeLimits, probe_video

from .pair_store import PairRecord, PairStore
from .policy import WAN_FPS, VideoShape, WanPolicy
from .progress import RunProgress

logger = logging.getLogger(__name__)

IMPORT_ROUND = 0
FRAMING = "first num_frames at 16 fps from t=0; resize to cover, centre crop"  # recorded in the store settings


@dataclass(frozen=True)
class SkippedRow:
    """A row of the pair file that gave no pair: ``video`` is the file that failed, or None when the row
    itself was invalid (``error`` then says why, e.g. a missing video or an unknown label)."""

    line: int
    video: str | None
    error: str


@dataclass(frozen=True)
class PairImport:
    """What importing a pair file did, over every process."""

    source: Path
    stored: int  # pairs encoded and stored by this call
    already_stored: int  # pairs an earlier call stored (a resumed import skips them)
    ties: int  # rows labelled as a tie (no winner): skipped
    skipped: tuple[SkippedRow, ...]  # rows with an invalid field or a missing, corrupt or too short video, by line
    encoded_videos: int  # distinct videos this call decoded and encoded

    @property
    def pairs(self) -> int:
        return self.stored + self.already_stored

    def metrics(self) -> dict[str, float]:
        return {
            "pairs/usable": float(self.pairs), "pairs/stored": float(self.stored),
            "pairs/already_stored": float(self.already_stored), "pairs/ties": float(self.ties),
            "pairs/skipped_rows": float(len(self.skipped)), "pairs/encoded_videos": float(self.encoded_videos),
        }


def check_pair_options(pairs: str, *, online_every: int | None) -> None:
    """``FlowDpoConfig`` with ``pairs``: the file exists and the run is offline."""
    if not Path(pairs).is_file():
        raise ConfigError(f"pairs: {pairs} is not a file (give a pair CSV or JSONL, docs/flow_dpo_pairs.md)")
    if online_every is not None:
        raise ConfigError(f"online_every = {online_every} samples new pairs from the policy, but pairs = {pairs} "
                          "trains on given pairs only; drop one of the two")


def check_prompts_are_pairs(prompts: str, pairs: str) -> None:
    """With ``pairs``, the run's prompt file must be the pair file: its ``prompt`` column gives the prompts
    (cached before the text encoder is dropped), and the run record then holds the pair file's sha256."""
    if Path(prompts).resolve() != Path(pairs).resolve():
        raise ConfigError(f"with pairs = {pairs}, prompts must name the same file (its prompt column gives the "
                          f"prompts), got prompts = {prompts}; pass --prompts {pairs}")


def read_pair_file(path: str | Path) -> PreferenceData:
    """The pairs of a pair file; invalid rows (a missing video, an unknown label) are logged and skipped.
    Prompts are stripped as ``read_prompts`` strips them, so that the run has cached each one's embedding."""
    data = read_preferences(path, skip_invalid=True)
    return replace(data, pairs=[replace(pair, prompt=pair.prompt.strip()) for pair in data.pairs])


def prompts_by_line(data: PreferenceData) -> list[str]:
    """Each pair's prompt at its line (other entries empty): the prompt list a store of imported pairs is
    checked against (``PairStore.for_run``), since ``prompt_index`` is the line."""
    prompts = [""] * (max((pair.line for pair in data.pairs), default=0) + 1)
    for pair in data.pairs:
        prompts[pair.line] = pair.prompt
    return prompts


def import_settings(pairs: str | Path, *, model: str, policy_fields: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """What imported pairs depend on, recorded in the store: the pair file's bytes, the model, the policy
    fields that shape latents and prompt embeddings, and how clips are framed."""
    return {"import": {"pairs_sha256": file_sha256(pairs), "model": model, **policy_fields,
                       "fps": WAN_FPS, "framing": FRAMING}}


def wan_frame_indices(name: str, *, total_frames: int, fps: float, num_frames: int) -> list[int]:
    """Source frame shown at each instant k / 16 s, k < ``num_frames`` (the clip's start, resampled to Wan's
    16 fps by picking the frame on screen). Raises VideoDecodeError for a clip that ends earlier."""
    indices = [math.floor(k * fps / WAN_FPS + 1e-9) for k in range(num_frames)]
    if indices[-1] >= total_frames:
        raise VideoDecodeError(
            name, f"too short: num_frames = {num_frames} at {WAN_FPS:g} fps needs the frame on screen at "
                  f"{(num_frames - 1) / WAN_FPS:.3f} s (source frame {indices[-1]}), but its {total_frames} frames at "
                  f"{fps:g} fps end with one at {(total_frames - 1) / fps:.3f} s; use longer clips or a smaller "
                  "num_frames"
        )
    return indices


def cover_and_crop(frames: torch.Tensor, *, height: int, width: int) -> torch.Tensor:
    """uint8 (T, 3, h, w) → (T, 3, height, width): scaled (antialiased bicubic) until it covers the target,
    then centre-cropped, so the aspect ratio is kept and the borders of the longer side are cut."""
    source_height, source_width = frames.shape[-2:]
    scale = max(height / source_height, width / source_width)
    size = [max(height, round(source_height * scale)), max(width, round(source_width * scale))]
    return center_crop(resize(frames, size, interpolation=InterpolationMode.BICUBIC, antialias=True), [height, width])


def training_frames(path: str | Path, shape: VideoShape, *, limits: DecodeLimits = DecodeLimits()) -> torch.Tensor:
    """A video file as the float frames (T, 3, H, W) in [0, 1] that Flow-DPO trains on (module docstring).

    Raises:
        VideoDecodeError: missing, corrupt, over ``limits``, or too short for ``shape.num_frames`` at 16 fps.
    """
    name = str(path)
    probe_video(name, limits=limits)
    reader = open_reader(name)
    indices = wan_frame_indices(name, total_frames=reader.total_frames, fps=reader.fps, num_frames=shape.num_frames)
    frames = cover_and_crop(reader.frames(indices), height=shape.height, width=shape.width)
    return frames.float() / 255


def import_pairs(
    policy: WanPolicy,
    data: PreferenceData,
    store: PairStore,
    *,
    shape: VideoShape,
    model: str,
    accelerator: Accelerator,
    progress: RunProgress | None = None,
    limits: DecodeLimits = DecodeLimits(),
) -> PairImport:
    """Encode the pairs of ``data`` not yet in ``store`` (rows split over the processes) and return the counts.

    Raises:
        DataError: the file gives no usable pair (every row a tie, invalid or with a bad video).
    """
    progress = progress or RunProgress.off()
    done = store.done_prompts(IMPORT_ROUND)
    decided = [pair for pair in data.pairs if pair.label != 0]
    waiting = [pair for pair in decided if pair.line not in done]
    mine = waiting[accelerator.process_index :: accelerator.num_processes]
    uses = Counter(video for pair in mine for video in (pair.video_a, pair.video_b))
    encoder = _VideoEncoder(policy, shape, limits, uses=uses)
    failed = []
    progress.start("pairs: encoding", total=len(mine))
    for pair in mine:
        winner, loser = (pair.video_a, pair.video_b) if pair.label > 0 else (pair.video_b, pair.video_a)
        winner_latents, error = encoder.take(winner)
        loser_latents, loser_error = encoder.take(loser, needed=error is None)
        progress.advance()
        if error or loser_error:
            failed.append(SkippedRow(pair.line, winner if error else loser, error or loser_error))
            continue
        _store_pair(store, accelerator.process_index, pair, policy, winner=winner_latents, loser=loser_latents,
                    model=model)
    accelerator.wait_for_everyone()
    summary = PairImport(
        source=data.source, stored=sum(gather_object([len(mine) - len(failed)])),
        already_stored=len(decided) - len(waiting), ties=len(data.pairs) - len(decided),
        skipped=tuple(sorted([SkippedRow(line, None, reason) for line, reason in data.skipped] + gather_object(failed),
                             key=lambda row: row.line)),
        encoded_videos=sum(gather_object([encoder.encoded])),
    )
    _report(summary)
    return summary


class _VideoEncoder:
    """Latents of each video, computed once and kept only while a later row of this process still uses it."""

    def __init__(self, policy: WanPolicy, shape: VideoShape, limits: DecodeLimits, *, uses: Counter[str]) -> None:
        self.policy, self.shape, self.limits, self.uses = policy, shape, limits, uses
        self.cache: dict[str, torch.Tensor | str] = {}
        self.encoded = 0

    def take(self, video: str, *, needed: bool = True) -> tuple[torch.Tensor | None, str | None]:
        """(latents (C, F, h, w), None), or (None, the error) for a video that cannot be read; (None, None) when
        not ``needed`` (the row's other video failed) and not computed yet."""
        self.uses[video] -= 1
        if video not in self.cache:
            if not needed:
                return None, None
            self.cache[video] = self._encode(video)
        value = self.cache[video] if self.uses[video] else self.cache.pop(video)
        return (None, value) if isinstance(value, str) else (value, None)

    def _encode(self, video: str) -> torch.Tensor | str:
        try:
            latents = self.policy.encode(training_frames(video, self.shape, limits=self.limits)[None])[0]
        except VideoDecodeError as error:
            return error.reason
        self.encoded += 1
        return latents


def _store_pair(
    store: PairStore, rank: int, pair: PreferencePair, policy: WanPolicy, *, winner: torch.Tensor,
    loser: torch.Tensor, model: str,
) -> None:
    conditional, _ = policy.prompt_embeddings([pair.prompt])
    record = PairRecord(
        round=IMPORT_ROUND, prompt_index=pair.line, prompt=pair.prompt,
        file=f"pairs/{IMPORT_ROUND}_{pair.line}_0.safetensors",
        winner_reward=math.nan, loser_reward=math.nan, model=model, latent_shape=list(winner.shape),
    )
    store.add(rank, record, winner=winner, loser=loser, prompt_embeds=conditional[0])


def _report(summary: PairImport) -> None:
    for row in summary.skipped:
        if row.video is not None:  # read_preferences has logged the invalid rows
            logger.warning("%s line %d skipped: video %s: %s", summary.source, row.line, row.video, row.error)
    logger.info("%s: %d pair(s) usable (%d stored now, %d stored before), %d tie(s) and %d row(s) skipped, "
                "%d video(s) encoded", summary.source, summary.pairs, summary.stored, summary.already_stored,
                summary.ties, len(summary.skipped), summary.encoded_videos)
    if not summary.pairs:
        raise DataError(f"{summary.source}: no usable pair: {summary.ties} tie(s), {len(summary.skipped)} row(s) "
                        "skipped (listed above); a pair needs a label A or B and two readable videos")
