"""Test-time scaling for ``descore tune sample``: spend sampling compute, guided by a reward model, to keep a
better video per (prompt, seed). Two searches (``docs/test_time_scaling.md``):

* ``best_of`` — Video-T1's random linear search (Liu et al., "Video-T1: Test-Time Scaling for Video Generation",
  arXiv 2503.18942): N initial noises, each denoised in full, scored, the argmax kept. Candidate j of the video
  with seed s starts from the noise of seed ``s + CANDIDATE_SEED_STRIDE·j``, so candidate 0 *is* the plain sample
  and ``best_of: 1`` samples exactly what plain sampling does. Works with either sampler.
* ``noise_beam`` — a beam search over initial noises with a cheap look-ahead, in the spirit of Video-T1's search
  over noises: a population of noises, each denoised for ``lookahead_steps`` Euler steps of the ODE and then
  sent straight to σ = 0 (the predicted clean latent x̂0 = x_σ − σ·v), decoded and scored; the best
  ``beam_keep`` stay and are perturbed (z' = √(1 − a²)·z + a·ε, still standard normal) to refill the
  population, for ``beam_rounds`` rounds; finally the kept noises, and always the plain sample's own noise, are
  denoised in full and the best is kept — so the search never returns a video its reward ranks below the plain
  sample. It needs intermediate latents, so it runs the Euler ODE sampler only.

Scores are of the frames the written file holds: the encoder stores yuv420p, so frames are passed through that
colour conversion in memory (no mp4 round trip) before scoring; with ``lossless: true`` the written video, decoded
and scored again, gives the recorded score exactly. A NaN score (the reward failed on that candidate) never wins;
a video whose candidates all fail is reported failed and not written.

The selection functions are pure; the two searches take the sampler and the reward as callables.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from reward import RewardModel, VideoFrames
from reward.checkpoint import atomic_file
from reward.errors import DataError
from reward.json_values import finite_or_none
from reward.seeds import seeded_generator

from .policy import WAN_FPS, WanPolicy
from .rollout import ode_sample

Search = Literal["best_of", "noise_beam"]
SEARCHES: tuple[str, ...] = ("best_of", "noise_beam")
# Candidate j > 0 of the video with seed s draws seed s + stride·j: far above every plain seed (seed + 1000·i + k)
# of a suite of fewer than a million prompts, so no candidate repeats another video's noise.
CANDIDATE_SEED_STRIDE = 1_000_000_000

FrameScorer = Callable[[np.ndarray], float]  # uint8 (T, H, W, 3) -> reward, NaN on failure
KeepCandidate = Callable[[int, np.ndarray], None]  # (candidate id, frames) -> write it somewhere


@dataclass(frozen=True)
class SearchSettings:
    """What a search does per video (the ``SampleConfig`` fields of the same names)."""

    method: Search = "best_of"
    best_of: int = 1
    beam_width: int = 4
    beam_keep: int = 2
    beam_rounds: int = 2
    lookahead_steps: int = 2
    perturbation: float = 0.5


@dataclass(frozen=True)
class Candidate:
    """One scored candidate of a video's search: a row of ``candidates.csv``.

    ``stage`` is ``full`` (denoised in full) or ``lookahead`` (scored on its predicted clean latent); ``seed`` is
    the seed of its initial noise, None for a perturbed noise, whose ``parent`` is the candidate it came from."""

    candidate: int
    stage: Literal["full", "lookahead"]
    round: int
    seed: int | None
    parent: int | None
    reward: float


@dataclass(frozen=True)
class SearchResult:
    """The kept video (None when every full candidate failed), which candidate it is, every scored candidate
    in order, and the transformer forward passes spent (one pass = one guided velocity)."""

    frames: np.ndarray | None
    kept: int | None
    candidates: list[Candidate]
    forward_passes: int


# ----- pure selection ----------------------------------------------------------------------------------------


def candidate_seed(video_seed: int, candidate: int) -> int:
    """Seed of candidate ``candidate``'s initial noise; candidate 0 is the plain sample's seed."""
    return video_seed + CANDIDATE_SEED_STRIDE * candidate


def best_candidate(rewards: Sequence[float]) -> int | None:
    """Index of the highest finite reward (the first on a tie); None when none is finite. NaN never wins."""
    finite = [(reward, -index) for index, reward in enumerate(rewards) if math.isfinite(reward)]
    return -max(finite)[1] if finite else None


def top_candidates(rewards: Sequence[float], count: int) -> list[int]:
    """Indices of the ``count`` highest finite rewards, best first (ties: lower index first); NaN is never kept."""
    finite = sorted((-reward, index) for index, reward in enumerate(rewards) if math.isfinite(reward))
    return [index for _, index in finite[:count]]


def perturbed_noise(noise: torch.Tensor, fresh: torch.Tensor, strength: float) -> torch.Tensor:
    """√(1 − a²)·z + a·ε: for independent standard normal z and ε, again standard normal, correlated
    √(1 − a²) with z — a step of size ``strength`` = a away from the parent noise that stays on the prior."""
    return math.sqrt(1.0 - strength**2) * noise + strength * fresh


def lookahead_sigmas(sigmas: torch.Tensor, steps: int) -> torch.Tensor:
    """The schedule's first ``steps`` sigmas, then 0: ``steps − 1`` Euler steps of the ODE, then one Euler step
    from σ straight to 0, which lands on the predicted clean latent x̂0 = x_σ − σ·v. ``steps`` = all steps
    is the full schedule itself (it already ends at 0)."""
    if not 1 <= steps <= len(sigmas) - 1:
        raise ValueError(f"lookahead steps must be in [1, {len(sigmas) - 1}], got {steps}")
    return torch.cat([sigmas[:steps], sigmas.new_zeros(1)])


def noise_beam_cost(settings: SearchSettings, num_steps: int) -> int:
    """Most forward passes ``noise_beam`` spends on one video: W·L for the first population, (W − K)·L per
    further round, and (K + 1)·S for the finalists (the kept noises and the plain noise, if not among them)."""
    width, keep, lookahead = settings.beam_width, settings.beam_keep, settings.lookahead_steps
    return width * lookahead + settings.beam_rounds * (width - keep) * lookahead + (keep + 1) * num_steps


# ----- scoring -----------------------------------------------------------------------------------------------


def stored_frames(frames: np.ndarray) -> np.ndarray:
    """uint8 (T, H, W, 3) as the encoder stores them: converted to yuv420p (chroma halved) and back, by the same
    libswscale conversion ``reward.video.write_video`` applies. A lossless (qp 0) file decodes to exactly these."""
    import av

    return np.stack([
        av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24").reformat(format="yuv420p")
        .to_ndarray(format="rgb24")
        for image in frames
    ])


def frame_scorer(model: RewardModel, prompt: str) -> FrameScorer:
    """Score one video's frames with ``prompt`` in memory, as the written file would be scored."""

    def score(frames: np.ndarray) -> float:
        video = VideoFrames(stored_frames(frames), fps=WAN_FPS, name=f"<candidate for {prompt[:40]!r}>")
        return float(model.score([video], [prompt]).rewards[0])

    return score


# ----- the searches ------------------------------------------------------------------------------------------


def best_of_n(frames_of: Callable[[int], np.ndarray], score: FrameScorer, *, video_seed: int, count: int,
              num_steps: int, keep: KeepCandidate | None = None) -> SearchResult:
    """Sample ``count`` candidates (``frames_of(seed)`` -> uint8 frames), score each and keep the argmax.
    Only the best frames so far stay in memory."""
    candidates, best_frames, best = [], None, None
    for index in range(count):
        seed = candidate_seed(video_seed, index)
        frames = frames_of(seed)
        reward = score(frames)
        candidates.append(Candidate(index, "full", 0, seed, None, reward))
        if keep is not None:
            keep(index, frames)
        if best_candidate([c.reward for c in candidates]) == index:
            best_frames, best = frames, index
    return SearchResult(best_frames, best, candidates, forward_passes=count * num_steps)


@dataclass
class OdeDenoiser:
    """The Euler ODE of the rollouts for one prompt: what ``noise_beam`` moves along. ``noise_of(seed)`` is the
    sampler's own initial noise, so candidate 0 denoises to the plain ``euler_ode`` sample bit for bit."""

    policy: WanPolicy
    prompt: str
    num_steps: int
    guidance_scale: float
    noise_of: Callable[[int], torch.Tensor]  # seed -> (1, C, F, H, W) initial noise
    frames_of: Callable[[torch.Tensor], np.ndarray]  # latents at σ = 0 -> uint8 (T, H, W, 3)

    def denoise(self, noise: torch.Tensor, steps: int) -> torch.Tensor:
        """Latents at σ = 0 after ``steps`` ODE steps and the jump to 0 (``steps`` = num_steps: the full sample)."""
        sigmas, timesteps = self.policy.schedule(self.num_steps)
        conditional, unconditional = self.policy.prompt_embeddings([self.prompt])
        return ode_sample(
            lambda latents, index: self.policy.velocity(latents, timesteps[index], conditional, unconditional,
                                                        self.guidance_scale),
            noise, lookahead_sigmas(sigmas, steps),
        )


def noise_beam_search(denoiser: OdeDenoiser, score: FrameScorer, *, video_seed: int, settings: SearchSettings,
                      keep: KeepCandidate | None = None) -> SearchResult:
    """The reward-guided beam search over initial noises (module docstring). Deterministic in ``video_seed``:
    candidate j < W of the first round starts from seed ``candidate_seed(video_seed, j)``, and the ε of child c
    of round r comes from ``seeded_generator(video_seed, r, c)``."""
    lookahead, width, kept_count = settings.lookahead_steps, settings.beam_width, settings.beam_keep
    noises = [denoiser.noise_of(candidate_seed(video_seed, index)) for index in range(width)]
    candidates = [Candidate(index, "lookahead", 0, candidate_seed(video_seed, index), None,
                            score(denoiser.frames_of(denoiser.denoise(noise, lookahead))))
                  for index, noise in enumerate(noises)]
    passes = width * lookahead
    population = list(range(width))
    for round_index in range(1, settings.beam_rounds + 1):
        parents = _best_of_population(candidates, population, kept_count)
        if not parents:
            break  # every look-ahead failed: nothing to expand
        population = list(parents)
        for child in range(width - kept_count):
            parent = parents[child % len(parents)]
            fresh = torch.randn(noises[parent].shape, generator=seeded_generator(video_seed, round_index, child))
            noises.append(perturbed_noise(noises[parent], fresh.to(noises[parent].device), settings.perturbation))
            latents = denoiser.denoise(noises[-1], lookahead)
            candidates.append(Candidate(len(noises) - 1, "lookahead", round_index, None, parent,
                                        score(denoiser.frames_of(latents))))
            population.append(len(noises) - 1)
            passes += lookahead
    finalists = list(dict.fromkeys([*_best_of_population(candidates, population, kept_count), 0]))
    finals, best_frames = [], None
    for index in finalists:
        frames = denoiser.frames_of(denoiser.denoise(noises[index], denoiser.num_steps))
        passes += denoiser.num_steps
        lookahead_row = candidates[index]
        finals.append(Candidate(index, "full", lookahead_row.round, lookahead_row.seed, lookahead_row.parent,
                                score(frames)))
        if keep is not None:
            keep(index, frames)
        if best_candidate([c.reward for c in finals]) == len(finals) - 1:
            best_frames = frames
    winner = best_candidate([c.reward for c in finals])
    return SearchResult(best_frames, None if winner is None else finals[winner].candidate, candidates + finals, passes)


def _best_of_population(candidates: list[Candidate], population: list[int], count: int) -> list[int]:
    """Candidate ids of the ``count`` best look-ahead scores among ``population`` (NaN never kept)."""
    return [population[i] for i in top_candidates([candidates[index].reward for index in population], count)]


# ----- records -----------------------------------------------------------------------------------------------

SEARCH_RECORDS = "search"  # <output_dir>/search/<plan position>.json: one video's candidates, written before its mp4
CANDIDATES = "candidates.csv"  # every video's candidates, written once all videos are done
CANDIDATE_VIDEOS = "candidates"  # --keep_candidates: <output_dir>/candidates/<video>.c<j>.mp4
CANDIDATE_COLUMNS = ("prompt_index", "k", "file", "candidate", "stage", "round", "seed", "parent", "reward", "kept")


def search_record_path(out: Path, position: int) -> Path:
    return out / SEARCH_RECORDS / f"{position:06d}.json"


def write_search_record(path: Path, *, prompt_index: int, k: int, file: str, result: SearchResult) -> Path:
    """One video's search (atomically): its candidates, the kept one (null: every candidate failed), the cost."""
    record = {"prompt_index": prompt_index, "k": k, "file": file, "kept": result.kept,
              "forward_passes": result.forward_passes,
              "candidates": [{**asdict(c), "reward": finite_or_none(c.reward)}
                             for c in result.candidates]}
    with atomic_file(path) as handle:
        handle.write(json.dumps(record, indent=1) + "\n")
    return path


def read_search_record(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{path}: unreadable search record ({error}); remove it and run the same command again "
                        "to search that video again") from error


def write_candidates(out: Path, records: Sequence[Mapping[str, Any]]) -> Path:
    """``candidates.csv``: one row per scored candidate of every video, in plan order; ``reward`` empty where the
    reward failed; ``kept`` 1 on the full candidate that was written (none for a failed video)."""
    with atomic_file(out / CANDIDATES) as handle:
        writer = csv.DictWriter(handle, fieldnames=CANDIDATE_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for record in records:
            for row in record["candidates"]:
                kept = row["stage"] == "full" and row["candidate"] == record["kept"]
                writer.writerow({"prompt_index": record["prompt_index"], "k": record["k"], "file": record["file"],
                                 **{key: "" if row[key] is None else row[key] for key in CANDIDATE_COLUMNS[3:9]},
                                 "kept": int(kept)})
    return out / CANDIDATES
