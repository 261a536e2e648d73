"""``descore tune sample``: videos from the base model or a tuned LoRA, with fixed per-prompt seeds.

Two samplers (``sampler``), both on the checkpoint's sigma schedule with ``num_steps`` steps, classifier-free
guidance ``guidance_scale`` and the same initial noise:

* ``pipeline`` (default) — diffusers' own ``WanPipeline.__call__`` with the checkpoint's scheduler (UniPC for
  Wan2.1-Diffusers). This is what a user of the LoRA gets in any diffusers workflow, and what published
  Wan/VBench numbers are sampled with, so base-vs-tuned comparisons made here carry over.
* ``euler_ode`` — exactly the deterministic path of the trainers' rollouts (``generator_rl/rollout.py``
  ``sample_trajectory`` with no stochastic step: Euler steps of the probability-flow ODE on the same sigmas
  and timesteps, the policy's guided velocity). It shows what the RL reward saw while training. Precision
  follows ``transformer_dtype`` without autocast; GRPO rollouts run under accelerate's ``mixed_precision``,
  so with bf16 the two differ by bf16 rounding only.

The LoRA is loaded by ``WanPipeline.load_lora_weights`` for both, so a LoRA that samples here loads in any
diffusers workflow. Video k of prompt i always starts from the noise of seed ``seed + 1000·i + k`` (a CPU
generator, as the pipeline draws it): base and tuned videos of a prompt, and the two samplers, share noise.
(Trainers draw rollout noise per training step and sample id, so a video here is not a replay of a rollout.)

Output (``<output_dir>``): ``samples.json`` first (a run record: model, LoRA and its fingerprint, sampler and
scheduler settings, and the planned videos), then the mp4s at 16 fps, then ``index.csv`` (prompt, seed,
file, sampler; ``file`` relative to the CSV's folder; ``descore reward score --data`` reads it). Names:
``file_naming: index`` gives ``<i>_<k>.mp4``; ``vbench`` gives VBench's ``{prompt}-{k}.mp4`` (the prompt
verbatim, as VBench's ``prompts/README.md`` asks and its evaluator looks files up) inside
``<output_dir>/videos/``, a folder holding only videos, as ``vbench evaluate --videos_path`` needs (its
standard mode takes the file suffix from the first file it lists).

Reproducibility: the sampled frames are a function of the settings and the seed (on a given device and
library stack), but libx264's lossy bitstream is not: the same frames can encode to slightly different files
from run to run. ``lossless: true`` (x264 at qp 0, larger files) makes the decoded frames exactly
reproducible, e.g. to check that N processes give what one gives.

Resume: each mp4 is written under a temporary name and renamed when complete, so a killed run never leaves a
half file that looks finished; running the same command again samples only the missing videos. A re-run
with other settings is refused with the differences; ``--overwrite true`` removes what the earlier run wrote
and samples everything again. ``--output_dir`` must be new, empty or an earlier ``tune sample`` output (it
holds ``samples.json``); any other folder is refused unless ``--overwrite true``, so sampling never replaces
files it did not write.

Test-time search (``--reward R.yaml``; ``generator_rl/test_time.py``, ``docs/test_time_scaling.md``): each video
is the best of several candidates by that reward — ``--search best_of --best_of N`` (full samples from the seeds
s + 10⁹·j, j = 0 the plain seed) or ``--search noise_beam`` (a reward-guided search over initial noises, Euler ODE
only). Every candidate's score goes to ``candidates.csv``; ``samples.json`` gains a ``search`` group (method,
settings, the reward entry), so a re-run with another search is refused like any other change. A video is done
when its mp4 exists; its ``search/<n>.json`` record is written just before, and a video whose every candidate
failed is left out of ``index.csv`` (counted in the log) and searched again by a re-run.

Several processes (``accelerate launch -m descore tune sample …`` or ``torchrun``) split the videos still to
sample; seeds do not depend on the split, so 1 and N processes sample the same frames. The main process shows
the progress bar and writes ``index.csv`` once every process is done.
"""

from __future__ import annotations

import csv
import importlib
import logging
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from accelerate import PartialState
from diffusers import WanPipeline
from tqdm.auto import tqdm

from reward import build_reward
from reward.base import check_reward_entry
from reward.checkpoint import atomic_file
from reward.entry_file import read_reward_entry
from reward.errors import ConfigError, DataError
from reward.run_record import (
    RunMismatchError,
    check_model_source,
    check_output_directory,
    config_differences,
    read_record,
    resolved_config,
    write_record,
)
from reward.video import write_video

from .checkpoint import LORA_WEIGHTS, lora_fingerprint
from .config import DTYPES, PolicyConfig, read_prompts
from .policy import LEARNER, WAN_FPS, WanPolicy, component_dtypes
from .rollout import SdeSettings, sample_trajectory
from .test_time import (
    CANDIDATE_SEED_STRIDE,
    CANDIDATE_VIDEOS,
    CANDIDATES,
    SEARCH_RECORDS,
    SEARCHES,
    FrameScorer,
    KeepCandidate,
    OdeDenoiser,
    Search,
    SearchResult,
    SearchSettings,
    best_of_n,
    frame_scorer,
    noise_beam_cost,
    noise_beam_search,
    read_search_record,
    search_record_path,
    write_candidates,
    write_search_record,
)

logger = logging.getLogger(__name__)

SAMPLES_RECORD = "samples.json"  # written first: it marks a folder as `tune sample` output
INDEX = "index.csv"
JOB = "tune sample"
VBENCH_FOLDER = "videos"
SEED_STRIDE = 1000  # video k of prompt i uses seed + SEED_STRIDE·i + k
MAX_FILE_NAME_BYTES = 255  # ext4, xfs, btrfs, APFS
Sampler = Literal["pipeline", "euler_ode"]
FileNaming = Literal["index", "vbench"]
SAMPLERS: tuple[str, ...] = ("pipeline", "euler_ode")
FILE_NAMINGS: tuple[str, ...] = ("index", "vbench")


@dataclass
class SampleConfig:
    prompts: str | None = field(default=None, metadata={"help": "Prompt file (.txt or .csv with a 'prompt' column)."})
    output_dir: str | None = field(default=None, metadata={"help": "Output folder for the mp4 files and index.csv."})
    lora: str | None = field(default=None, metadata={"help": "LoRA folder (diffusers format); none: the base model."})
    seed: int = field(default=0, metadata={"help": "Base seed; video k of prompt i uses seed + 1000·i + k."})
    videos_per_prompt: int = field(default=1, metadata={"help": "Videos per prompt (at most 1000; VBench asks for 5)."})
    sampler: Sampler = field(
        default="pipeline",
        metadata={"help": "pipeline: diffusers' WanPipeline with the checkpoint's scheduler (UniPC), what users of "
                          "the LoRA get and what published numbers use; euler_ode: the Euler ODE of the training "
                          "rollouts (same sigmas, timesteps, CFG), what the reward saw during RL."},
    )
    file_naming: FileNaming = field(
        default="index",
        metadata={"help": "index: <i>_<k>.mp4; vbench: videos/{prompt}-{k}.mp4, VBench's names (the prompt verbatim)."},
    )
    lossless: bool = field(
        default=False,
        metadata={"help": "Encode losslessly (x264 qp 0; files several times larger): the decoded frames are then "
                          "exactly reproducible. libx264's lossy output can differ between runs for the same frames."},
    )
    device: str | None = field(
        default=None, metadata={"help": "cuda or cpu; default: this process's accelerate device (cuda:<rank> or cpu)."}
    )
    overwrite: bool = field(
        default=False,
        metadata={"help": "Start afresh: sample every video again (removing what an earlier `tune sample` wrote "
                          "there), also into a non-empty --output_dir that is not a `tune sample` output."},
    )
    # ----- test-time scaling (generator_rl/test_time.py, docs/test_time_scaling.md) -----
    reward: str | None = field(
        default=None,
        metadata={"help": "Test-time search: a YAML file with one reward registry entry (as `reward score --reward`), "
                          "e.g. `name: descore_no_cot` + `path: ...`; each video is then the best of a --search by this "
                          "reward, and every candidate's score goes to candidates.csv. None: plain sampling."},
    )
    search: Search = field(
        default="best_of",
        metadata={"help": "With --reward. best_of: --best_of full samples per video, the best kept (either sampler); "
                          "noise_beam: beam search over initial noises scored by a look-ahead (--sampler euler_ode)."},
    )
    best_of: int = field(default=1, metadata={"help": "best_of: candidates per video (1: the plain sample, scored)."})
    beam_width: int = field(default=4, metadata={"help": "noise_beam: noises scored per round (W)."})
    beam_keep: int = field(default=2, metadata={"help": "noise_beam: noises kept per round and finalists (K < W)."})
    beam_rounds: int = field(default=2, metadata={"help": "noise_beam: rounds of perturbing the kept noises after the first."})
    lookahead_steps: int = field(
        default=2, metadata={"help": "noise_beam: ODE steps before a candidate jumps to its predicted clean latent "
                                     "and is scored (1 .. num_steps)."})
    perturbation: float = field(
        default=0.5, metadata={"help": "noise_beam: a in z' = sqrt(1 - a^2)·z + a·eps, in (0, 1] (1: a fresh noise)."})
    keep_candidates: bool = field(
        default=False,
        metadata={"help": "Also write every fully denoised candidate to candidates/<video>.c<j>.mp4 (not recorded: "
                          "a resumed run writes them for the videos it samples)."},
    )

    def __post_init__(self) -> None:
        if self.prompts is None or self.output_dir is None:
            raise ConfigError("--prompts and --output_dir are required")
        count = self.videos_per_prompt
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= SEED_STRIDE:
            raise ConfigError(
                f"videos_per_prompt must be an integer in [1, {SEED_STRIDE}] (seeds are seed + {SEED_STRIDE}·i + k), "
                f"got {self.videos_per_prompt!r}"
            )
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        if self.file_naming not in FILE_NAMINGS:
            raise ConfigError(f"file_naming must be one of {', '.join(FILE_NAMINGS)}, got {self.file_naming!r}")
        if self.device is not None and _device_type(self.device) not in ("cpu", "cuda"):
            raise ConfigError(f"device must be cpu or cuda (optionally cuda:N), got {self.device!r}")
        if self.lora is not None and not Path(self.lora).is_dir():
            raise ConfigError(f"--lora {self.lora} is not a folder (expected a diffusers-format LoRA folder)")
        self._check_search()

    def _check_search(self) -> None:
        if self.search not in SEARCHES:
            raise ConfigError(f"search must be one of {', '.join(SEARCHES)}, got {self.search!r}")
        for name, smallest in (("best_of", 1), ("beam_width", 2), ("beam_keep", 1), ("beam_rounds", 0), ("lookahead_steps", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < smallest:
                raise ConfigError(f"{name} must be an integer >= {smallest}, got {value!r}")
        if self.reward is None:
            if self.best_of != 1 or self.search != "best_of" or self.keep_candidates:
                raise ConfigError("--best_of, --search noise_beam and --keep_candidates need --reward (a YAML file with "
                                  "the reward entry that picks the best candidate)")
            return
        check_reward_entry(read_reward_entry(self.reward).entry)
        if self.search == "noise_beam":
            if self.sampler != "euler_ode":
                raise ConfigError("search noise_beam runs the Euler ODE (it scores intermediate latents), not the "
                                  f"{self.sampler} sampler; pass --sampler euler_ode")
            if self.best_of != 1:
                raise ConfigError(f"best_of ({self.best_of}) applies to search best_of; noise_beam's population is beam_width")
            if self.beam_keep >= self.beam_width:
                raise ConfigError(f"beam_keep ({self.beam_keep}) must be < beam_width ({self.beam_width}): the rest of "
                                  "each round's population are new perturbed noises")
            if not 0 < self.perturbation <= 1:
                raise ConfigError(f"perturbation must be in (0, 1], got {self.perturbation}")

    def search_settings(self) -> SearchSettings:
        return SearchSettings(self.search, self.best_of, self.beam_width, self.beam_keep, self.beam_rounds,
                              self.lookahead_steps, self.perturbation)


def _device_type(name: str) -> str | None:
    try:
        return torch.device(name).type
    except RuntimeError:
        return None


def sample_device(requested: str | None, default: torch.device) -> torch.device:
    if requested is not None and torch.device(requested).type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {requested} was asked for, but torch sees no CUDA device; use --device cpu")
    return torch.device(requested) if requested is not None else default


# ----- the plan: which videos, with which seeds and file names ---------------------------------------------


@dataclass(frozen=True)
class PlannedVideo:
    prompt: str
    k: int  # index of the video among its prompt's videos
    seed: int
    file: str  # relative to output_dir


def plan_videos(prompts: list[str], *, seed: int, videos_per_prompt: int, file_naming: FileNaming) -> list[PlannedVideo]:
    """Every video to sample, in prompt order; a pure function of its arguments (resume and sharding rely on it)."""
    if file_naming == "vbench":
        _check_distinct(prompts)
    return [
        PlannedVideo(prompt, k, seed + SEED_STRIDE * i + k, _file_name(prompt, i, k, file_naming))
        for i, prompt in enumerate(prompts)
        for k in range(videos_per_prompt)
    ]


def _file_name(prompt: str, index: int, k: int, file_naming: FileNaming) -> str:
    return f"{VBENCH_FOLDER}/{vbench_file_name(prompt, k)}" if file_naming == "vbench" else f"{index:04d}_{k}.mp4"


def vbench_file_name(prompt: str, k: int) -> str:
    """VBench's ``{prompt}-{k}.mp4``. VBench looks files up by the exact prompt, so a prompt that cannot be
    a file name is refused rather than altered (an altered name would never be found)."""
    name = f"{prompt}-{k}.mp4"
    if "/" in prompt or "\0" in prompt:
        raise ConfigError(
            f"prompt {prompt!r} contains '/' or a NUL byte, so it cannot be a VBench file name; use file_naming: index"
        )
    if len(name.encode("utf-8")) > MAX_FILE_NAME_BYTES:
        raise ConfigError(
            f"prompt {prompt[:60]!r}... gives a {len(name.encode('utf-8'))}-byte file name (the limit is "
            f"{MAX_FILE_NAME_BYTES}); VBench names videos by the prompt, use file_naming: index for long prompts"
        )
    return name


def _check_distinct(prompts: list[str]) -> None:
    first: dict[str, int] = {}
    for number, prompt in enumerate(prompts, start=1):
        if prompt in first:
            raise ConfigError(
                f"prompt {prompt!r} is given twice (prompts {first[prompt]} and {number}); VBench names files by the "
                "prompt, so both would write the same files. Remove the repeat or use file_naming: index"
            )
        first[prompt] = number


# ----- the record of what was sampled --------------------------------------------------------------------


def scheduler_settings(model: str) -> dict[str, Any]:
    """The checkpoint's scheduler config (class, shift, ...): it sets the sigmas of both samplers. Reads only
    ``model_index.json`` and ``scheduler/scheduler_config.json``; keys diffusers adds about itself
    (``_diffusers_version``) are left out."""
    library, name = WanPipeline.load_config(model)["scheduler"]
    config = getattr(importlib.import_module(library), name).load_config(model, subfolder="scheduler")
    return {"class": config["_class_name"], **{key: value for key, value in config.items() if not key.startswith("_")}}


def sample_settings(
    policy_args: PolicyConfig, sample: SampleConfig, plan: list[PlannedVideo], scheduler: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """What decides the videos (recorded in ``samples.json``; a re-run must match). Device and process
    count are left out: a video does not depend on them beyond float noise."""
    lora_weights = Path(sample.lora) / LORA_WEIGHTS if sample.lora is not None else None
    return resolved_config({
        "model": {
            "model": policy_args.model,
            "lora": sample.lora,
            "lora_fingerprint": lora_fingerprint(lora_weights) if lora_weights is not None and lora_weights.is_file() else None,
        },
        "sampling": {
            "sampler": sample.sampler,
            "scheduler": scheduler,
            "lossless": sample.lossless,
            **{name: getattr(policy_args, name) for name in (
                "transformer_dtype", "text_encoder_dtype", "height", "width", "num_frames", "num_steps",
                "guidance_scale", "negative_prompt", "max_sequence_length")},
        },
        "plan": {"seed": sample.seed, "videos_per_prompt": sample.videos_per_prompt, "file_naming": sample.file_naming,
                 "videos": plan},
        **({"search": search_settings(sample, policy_args.num_steps)} if sample.reward is not None else {}),
    })


def search_settings(sample: SampleConfig, num_steps: int) -> dict[str, Any]:
    """The ``search`` group of the record (test-time search only; plain sampling records none): the method, its
    own settings, the reward entry (and a local checkpoint's fingerprint) and the candidates' seed scheme."""
    reward = read_reward_entry(sample.reward)
    settings = sample.search_settings()
    if settings.method == "best_of":
        own = {"best_of": settings.best_of}
    else:
        own = {name: getattr(settings, name) for name in ("beam_width", "beam_keep", "beam_rounds", "lookahead_steps",
                                                          "perturbation")}
        own["max_forward_passes_per_video"] = noise_beam_cost(settings, num_steps)
    return {"method": settings.method, **own, "reward": {"label": reward.label, **reward.settings()},
            "candidate_seeds": f"candidate j of the video with seed s: s + {CANDIDATE_SEED_STRIDE}*j",
            "scored_frames": "uint8 frames after the encoder's yuv420p conversion (what a lossless file decodes to)"}


def check_earlier_run(out: Path, settings: Mapping[str, Mapping[str, Any]]) -> None:
    """Refuse to resume ``out`` when the videos in it were sampled with other settings (listing them)."""
    record = read_record(out / SAMPLES_RECORD)
    if record is None:
        return
    if record.get("job") != JOB:
        raise RunMismatchError(
            f"{out / SAMPLES_RECORD} is not a {JOB!r} record; choose another --output_dir or pass --overwrite true"
        )
    differences = config_differences(record["config"], settings)
    if differences:
        listing = "\n  ".join(differences)
        raise RunMismatchError(
            f"{out} holds videos sampled with other settings; adding to them would mix two samplings:\n  {listing}\n"
            "Choose another --output_dir, or pass --overwrite true to sample everything again (its earlier videos are removed)."
        )


def remove_earlier_run(out: Path) -> None:
    """What an earlier ``tune sample`` wrote in ``out`` (its planned videos, their temporary files, the
    index and the record); nothing else in the folder is touched, and a folder without a record is left as is."""
    if not (out / SAMPLES_RECORD).is_file():
        return
    try:
        plan = read_record(out / SAMPLES_RECORD)["config"].get("plan", {})
    except ConfigError:
        plan = {}  # a record this command cannot read lists no videos to remove
    for video in plan.get("videos", []) if isinstance(plan, dict) else []:
        path = (out / str(video["file"])).resolve() if isinstance(video, dict) and "file" in video else None
        if path is not None and out.resolve() in path.parents:  # only files inside the folder
            path.unlink(missing_ok=True)
            _staging_path(path).unlink(missing_ok=True)
    (out / INDEX).unlink(missing_ok=True)
    (out / CANDIDATES).unlink(missing_ok=True)
    for folder in (SEARCH_RECORDS, CANDIDATE_VIDEOS):  # the test-time search's own folders
        shutil.rmtree(out / folder, ignore_errors=True)
    (out / SAMPLES_RECORD).unlink()


# ----- the two samplers ----------------------------------------------------------------------------------

FrameSampler = Callable[[PlannedVideo], np.ndarray]  # -> uint8 (T, H, W, 3)


def load_sampling_pipeline(policy_args: PolicyConfig, lora: str | None, device: torch.device) -> WanPipeline:
    dtypes = component_dtypes(DTYPES[policy_args.transformer_dtype], DTYPES[policy_args.text_encoder_dtype])
    pipeline = WanPipeline.from_pretrained(policy_args.model, dtype=dtypes)
    if lora is not None:
        pipeline.load_lora_weights(lora, adapter_name=LEARNER)
    if policy_args.vae_tiling:
        pipeline.vae.enable_tiling()
    pipeline.set_progress_bar_config(disable=True)
    return pipeline.to(device)


def initial_noise(policy: WanPolicy, policy_args: PolicyConfig, seed: int) -> torch.Tensor:
    """(1, C, F, H, W) standard normal from a CPU generator seeded with ``seed``: the pipeline's own draw."""
    shape = policy.latent_shape(1, policy_args.shape)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(policy.device)


def ode_latents(policy: WanPolicy, policy_args: PolicyConfig, prompt: str, seed: int) -> torch.Tensor:
    """Denoised latents (1, C, F, H, W) of the rollouts' deterministic path: ``sample_trajectory`` with no
    stochastic step (so its SDE settings and generators are never used)."""
    sigmas, timesteps = policy.schedule(policy_args.num_steps)
    conditional, unconditional = policy.prompt_embeddings([prompt])
    trajectory = sample_trajectory(
        lambda latents, index: policy.velocity(latents, timesteps[index], conditional, unconditional, policy_args.guidance_scale),
        initial_noise(policy, policy_args, seed),
        sigmas,
        settings=SdeSettings(),
        stochastic=[],
        generators=[torch.Generator()],
    )
    return trajectory.final


def as_uint8(frames: np.ndarray) -> np.ndarray:
    """Frames in [0, 1] → uint8, rounded (the pipeline's own ``np`` output is in [0, 1])."""
    return (frames * 255).round().astype("uint8")


def decoded_frames(policy: WanPolicy, latents: torch.Tensor) -> np.ndarray:
    """uint8 (T, H, W, 3) frames of one video's latents (1, C, F, H, W)."""
    return as_uint8(policy.decode(latents)[0].permute(0, 2, 3, 1).cpu().numpy())


def make_sampler(name: Sampler, pipeline: WanPipeline, policy_args: PolicyConfig) -> FrameSampler:
    """The frame function of ``sampler``, resolved once."""
    if name == "pipeline":
        def pipeline_frames(video: PlannedVideo) -> np.ndarray:
            frames = pipeline(
                prompt=video.prompt,
                negative_prompt=policy_args.negative_prompt,
                height=policy_args.height,
                width=policy_args.width,
                num_frames=policy_args.num_frames,
                num_inference_steps=policy_args.num_steps,
                guidance_scale=policy_args.guidance_scale,
                max_sequence_length=policy_args.max_sequence_length,
                generator=torch.Generator(device="cpu").manual_seed(video.seed),
                output_type="np",
            ).frames[0]
            return as_uint8(frames)

        return pipeline_frames
    if name == "euler_ode":
        policy = WanPolicy(pipeline, pipeline.device, policy_args.max_sequence_length, policy_args.negative_prompt)

        def euler_ode_frames(video: PlannedVideo) -> np.ndarray:
            return decoded_frames(policy, ode_latents(policy, policy_args, video.prompt, video.seed))

        return euler_ode_frames
    raise ConfigError(f"sampler must be one of {', '.join(SAMPLERS)}, got {name!r}")


# ----- files -----------------------------------------------------------------------------------------------


def _staging_path(path: Path) -> Path:
    # Hidden, and still .mp4: the encoder picks the container from the suffix.
    return path.with_name(f".{path.name}.partial.mp4")


def write_video_atomically(path: Path, frames: np.ndarray, *, lossless: bool) -> Path:
    """Encode to a temporary name, then rename: ``path`` exists only once it is complete."""
    staging = _staging_path(path)
    try:
        write_video(staging, frames, WAN_FPS, lossless=lossless)
        os.replace(staging, path)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    return path


def write_index(out: Path, plan: list[PlannedVideo], sampler: Sampler) -> Path:
    """``index.csv``: prompt, seed, file (relative to ``out``), sampler — one row per video, in plan order."""
    with atomic_file(out / INDEX) as handle:
        writer = csv.DictWriter(handle, fieldnames=["prompt", "seed", "file", "sampler"], lineterminator="\n")
        writer.writeheader()
        writer.writerows({"prompt": v.prompt, "seed": v.seed, "file": v.file, "sampler": sampler} for v in plan)
    return out / INDEX


# ----- the job ---------------------------------------------------------------------------------------------


def run_sample(policy_args: PolicyConfig, sample: SampleConfig) -> list[Path]:
    """Sample every planned video not already in ``output_dir``; return the paths of all planned videos.

    Steps: check the inputs, the folder and an earlier run's settings (before any model loads); find the
    videos still missing; record the settings; each process samples its share of the missing videos; the
    main process writes ``index.csv``.
    """
    prompts = read_prompts(sample.prompts)
    plan = plan_videos(prompts, seed=sample.seed, videos_per_prompt=sample.videos_per_prompt, file_naming=sample.file_naming)
    out = check_output_directory(sample.output_dir, marker=SAMPLES_RECORD, overwrite=sample.overwrite)
    # Without a GPU, cpu=True is what makes accelerate join a torchrun group (gloo) instead of running alone.
    state = PartialState(cpu=not torch.cuda.is_available())
    device = sample_device(sample.device, state.device)
    check_model_source(policy_args.model, what="--model", ask_hub=True)
    if sample.reward is not None:
        check_search(sample, prompts=len(prompts), num_steps=policy_args.num_steps)
    settings = sample_settings(policy_args, sample, plan, scheduler_settings(policy_args.model))
    if not sample.overwrite:
        check_earlier_run(out, settings)
    pending = plan if sample.overwrite else [video for video in plan if not (out / video.file).is_file()]
    state.wait_for_everyone()  # every process has its list before any file changes
    if state.is_main_process:
        if sample.overwrite:
            remove_earlier_run(out)
        write_record(out / SAMPLES_RECORD, JOB, settings)
        logger.info("%s: %d of %d video(s) already there; sampling %d on %d process(es)",
                    out, len(plan) - len(pending), len(plan), len(pending), state.num_processes)
    state.wait_for_everyone()  # the earlier run's files are gone before new ones are written
    mine = pending[state.process_index :: state.num_processes]
    if mine and sample.reward is not None:
        search_videos(mine, plan, out, pipeline=load_sampling_pipeline(policy_args, sample.lora, device),
                      policy_args=policy_args, sample=sample, show_progress=state.is_main_process)
    elif mine:
        frames_of = make_sampler(sample.sampler, load_sampling_pipeline(policy_args, sample.lora, device), policy_args)
        for video in tqdm(mine, desc="sampling", unit="video", disable=not state.is_main_process):
            (out / video.file).parent.mkdir(parents=True, exist_ok=True)
            write_video_atomically(out / video.file, frames_of(video), lossless=sample.lossless)
    state.wait_for_everyone()
    if state.is_main_process and sample.reward is not None:
        finish_search(out, plan, sample)
    elif state.is_main_process:
        write_index(out, plan, sample.sampler)
    return [out / video.file for video in plan]


# ----- test-time search (generator_rl/test_time.py) ----------------------------------------------------------


def check_search(sample: SampleConfig, *, prompts: int, num_steps: int) -> None:
    """What the search settings must satisfy against the prompts and the policy (before any model loads)."""
    if sample.search == "noise_beam" and sample.lookahead_steps > num_steps:
        raise ConfigError(f"lookahead_steps ({sample.lookahead_steps}) must be <= num_steps ({num_steps})")
    if prompts * SEED_STRIDE > CANDIDATE_SEED_STRIDE:
        raise ConfigError(f"{prompts} prompts: test-time search supports at most {CANDIDATE_SEED_STRIDE // SEED_STRIDE} "
                          "(beyond that, candidate seeds would repeat other videos' seeds); split the prompt file")


def search_videos(videos: list[PlannedVideo], plan: list[PlannedVideo], out: Path, *, pipeline: WanPipeline,
                  policy_args: PolicyConfig, sample: SampleConfig, show_progress: bool) -> None:
    """Search each of ``videos``: its record (``search/<position>.json``) first, then the kept video's mp4, so
    a video is done once its mp4 exists; a video whose candidates all failed gets a record and no mp4."""
    reward = build_reward(read_reward_entry(sample.reward).entry)
    search = make_search(sample.search_settings(), sample.sampler, pipeline, policy_args)
    position = {video.file: number for number, video in enumerate(plan)}
    for video in tqdm(videos, desc=f"sampling ({sample.search})", unit="video", disable=not show_progress):
        keep = _candidate_writer(out, video, lossless=sample.lossless) if sample.keep_candidates else None
        result = search(video, frame_scorer(reward, video.prompt), keep)
        write_search_record(search_record_path(out, position[video.file]), prompt_index=position[video.file] //
                            sample.videos_per_prompt, k=video.k, file=video.file, result=result)
        if result.frames is not None:
            (out / video.file).parent.mkdir(parents=True, exist_ok=True)
            write_video_atomically(out / video.file, result.frames, lossless=sample.lossless)


VideoSearch = Callable[[PlannedVideo, FrameScorer, KeepCandidate | None], SearchResult]


def make_search(settings: SearchSettings, sampler: Sampler, pipeline: WanPipeline, policy_args: PolicyConfig) -> VideoSearch:
    """The search of ``settings.method`` for one video, resolved once (as :func:`make_sampler` resolves a sampler)."""
    if settings.method == "best_of":
        frames_of = make_sampler(sampler, pipeline, policy_args)

        def best_of(video: PlannedVideo, score: FrameScorer, keep: KeepCandidate | None) -> SearchResult:
            return best_of_n(lambda seed: frames_of(replace(video, seed=seed)), score, video_seed=video.seed,
                             count=settings.best_of, num_steps=policy_args.num_steps, keep=keep)

        return best_of
    if settings.method == "noise_beam":
        policy = WanPolicy(pipeline, pipeline.device, policy_args.max_sequence_length, policy_args.negative_prompt)

        def noise_beam(video: PlannedVideo, score: FrameScorer, keep: KeepCandidate | None) -> SearchResult:
            denoiser = OdeDenoiser(policy, video.prompt, policy_args.num_steps, policy_args.guidance_scale,
                                   noise_of=lambda seed: initial_noise(policy, policy_args, seed),
                                   frames_of=lambda latents: decoded_frames(policy, latents))
            return noise_beam_search(denoiser, score, video_seed=video.seed, settings=settings, keep=keep)

        return noise_beam
    raise ConfigError(f"search must be one of {', '.join(SEARCHES)}, got {settings.method!r}")


def _candidate_writer(out: Path, video: PlannedVideo, *, lossless: bool) -> Callable[[int, np.ndarray], None]:
    def write(candidate: int, frames: np.ndarray) -> None:
        path = out / CANDIDATE_VIDEOS / f"{Path(video.file).stem}.c{candidate}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_video_atomically(path, frames, lossless=lossless)

    return write


def finish_search(out: Path, plan: list[PlannedVideo], sample: SampleConfig) -> int:
    """``candidates.csv`` from every video's record and ``index.csv`` of the videos written; returns (and logs)
    how many videos failed (every candidate's reward failed: no mp4; a re-run searches them again)."""
    records = []
    for number, video in enumerate(plan):
        path = search_record_path(out, number)
        if not path.is_file():
            raise DataError(f"{path} is missing for {out / video.file}: the search record of a video is written "
                            "before its mp4; run the same command with --overwrite true to search everything again")
        records.append(read_search_record(path))
    write_candidates(out, records)
    written = [video for video in plan if (out / video.file).is_file()]
    write_index(out, written, sample.sampler)
    failed = len(plan) - len(written)
    if failed:
        logger.warning("%d of %d video(s) failed: the reward failed on every candidate (NaN); they are not written "
                       "and not in %s, their rows in %s have no kept candidate; a re-run searches them again",
                       failed, len(plan), INDEX, CANDIDATES)
    return failed
