"""`tune sample`: values are checked when the arguments are built, the output folder before the model loads;
a folder the command did not write is refused (and left alone) unless --overwrite. The Euler ODE sampler is
the rollouts' deterministic path; a killed run resumes without redoing finished videos, a re-run with other
settings is refused; two processes write the same files as one; VBench file names follow VBench."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from diffusers import WanPipeline

import generator_rl.sample as sample_module
from generator_rl.policy import WanPolicy
from generator_rl.sample import (
    INDEX,
    SAMPLES_RECORD,
    SampleConfig,
    as_uint8,
    initial_noise,
    load_sampling_pipeline,
    ode_latents,
    plan_videos,
    run_sample,
)
from generator_rl.sde import ode_step
from reward import build_reward
from reward.errors import ConfigError
from reward.jobs import ScoreConfig, run_score
from reward.run_record import RunMismatchError
from reward.score_report import format_score_report
from reward.video import write_video

from .helpers import Preempted
from .test_policy import tiny_policy_arguments


def _no_model_load(*args, **kwargs):
    raise AssertionError("the model was loaded before the bad value was refused")


def decoded(path: Path) -> np.ndarray:
    """Every frame of an mp4 as uint8 (T, H, W, 3)."""
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def fingerprint(path: Path) -> tuple[int, int, bytes]:
    """Inode, modification time and bytes: all three unchanged means the file was not written again."""
    status = path.stat()
    return status.st_ino, status.st_mtime_ns, path.read_bytes()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"prompts": None}, "--prompts and --output_dir are required"),
        ({"videos_per_prompt": 0}, "videos_per_prompt must be an integer in [1, 1000]"),
        ({"videos_per_prompt": -3}, "videos_per_prompt must be an integer in [1, 1000]"),
        ({"videos_per_prompt": 1001}, "videos_per_prompt must be an integer in [1, 1000] (seeds are seed + 1000·i + k), got 1001"),
        ({"sampler": "unipc"}, "sampler must be one of pipeline, euler_ode, got 'unipc'"),
        ({"file_naming": "prompt"}, "file_naming must be one of index, vbench, got 'prompt'"),
        ({"device": "gpu"}, "device must be cpu or cuda (optionally cuda:N), got 'gpu'"),
        ({"device": "meta"}, "device must be cpu or cuda (optionally cuda:N), got 'meta'"),
        ({"lora": "no/such/lora"}, "--lora no/such/lora is not a folder"),
    ],
)
def test_bad_values_are_refused(tmp_path, overrides, message):
    with pytest.raises(ConfigError) as raised:
        SampleConfig(**{"prompts": "p.txt", "output_dir": str(tmp_path / "out")} | overrides)
    assert message in str(raised.value)


def test_the_plan_names_files_as_vbench_does_and_refuses_unusable_prompts():
    """VBench's prompts/README.md: ``{prompt}-{index}.mp4`` with the prompt verbatim; seeds seed + 1000·i + k."""
    plan = plan_videos(["A cat, in the style of Ukiyo.", "rain"], seed=7, videos_per_prompt=2, file_naming="vbench")
    assert [(v.file, v.seed, v.k) for v in plan] == [
        ("videos/A cat, in the style of Ukiyo.-0.mp4", 7, 0), ("videos/A cat, in the style of Ukiyo.-1.mp4", 8, 1),
        ("videos/rain-0.mp4", 1007, 0), ("videos/rain-1.mp4", 1008, 1),
    ]
    assert [v.file for v in plan_videos(["rain", "rain"], seed=0, videos_per_prompt=1, file_naming="index")] == [
        "0000_0.mp4", "0001_0.mp4"]
    with pytest.raises(ConfigError, match="prompt 'rain' is given twice \\(prompts 1 and 3\\)"):
        plan_videos(["rain", "snow", "rain"], seed=0, videos_per_prompt=1, file_naming="vbench")
    with pytest.raises(ConfigError, match="contains '/' or a NUL byte"):
        plan_videos(["day/night"], seed=0, videos_per_prompt=1, file_naming="vbench")
    with pytest.raises(ConfigError, match="gives a 256-byte file name \\(the limit is 255\\)"):
        plan_videos(["é" * 125], seed=0, videos_per_prompt=1, file_naming="vbench")  # 250 bytes + "-0.mp4"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given when no GPU is visible")
def test_cuda_without_a_gpu_is_refused_before_the_model_loads(tiny_wan_dir, prompt_file, tmp_path, monkeypatch):
    monkeypatch.setattr(WanPipeline, "from_pretrained", _no_model_load)
    policy = tiny_policy_arguments(tiny_wan_dir)
    with pytest.raises(ConfigError, match="device cuda was asked for, but torch sees no CUDA device"):
        run_sample(policy, SampleConfig(prompts=str(prompt_file), output_dir=str(tmp_path / "out"), device="cuda"))


def test_a_foreign_folder_is_refused_before_the_model_loads(tiny_wan_dir, prompt_file, tmp_path, monkeypatch):
    monkeypatch.setattr(WanPipeline, "from_pretrained", _no_model_load)
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "state.bin").write_bytes(b"training state")
    policy = tiny_policy_arguments(tiny_wan_dir)
    with pytest.raises(ConfigError) as raised:
        run_sample(policy, SampleConfig(prompts=str(prompt_file), output_dir=str(out), device="cpu"))
    assert f"--output_dir {out} already holds files this command did not write (no {SAMPLES_RECORD})" in str(raised.value)
    assert sorted(path.name for path in out.rglob("*")) == ["checkpoints", "state.bin"]
    (tmp_path / "file.mp4").write_bytes(b"")
    with pytest.raises(ConfigError, match="--output_dir .*file.mp4 is a file; give a folder path"):
        run_sample(policy, SampleConfig(prompts=str(prompt_file), output_dir=str(tmp_path / "file.mp4"), device="cpu"))


def test_euler_ode_is_the_rollouts_deterministic_path(tiny_wan_dir, tmp_path):
    """Independently of ``sample_trajectory``: Euler steps x ← x + (σ_next − σ)·v with the policy's guided
    velocity on the scheduler's sigmas, from the noise the pipeline draws for the seed, give the latents the
    sampler computes (bit for bit) and the frames in its mp4; the pipeline's UniPC gives other frames."""
    arguments, seed = tiny_policy_arguments(tiny_wan_dir), 1003
    policy = arguments.load_policy(torch.device("cpu"), with_lora=False)
    sigmas, timesteps = policy.schedule(arguments.num_steps)
    conditional, unconditional = policy.prompt_embeddings(["a dog"])
    noise = torch.randn(policy.latent_shape(1, arguments.shape), generator=torch.Generator().manual_seed(seed))
    latents = noise
    for index in range(arguments.num_steps):
        velocity = policy.velocity(latents, timesteps[index], conditional, unconditional, arguments.guidance_scale)
        latents = ode_step(velocity, latents, float(sigmas[index]), float(sigmas[index + 1]))
    expected = as_uint8(policy.decode(latents)[0].permute(0, 2, 3, 1).numpy())

    pipeline = load_sampling_pipeline(arguments, None, torch.device("cpu"))
    sampler = WanPolicy(pipeline, torch.device("cpu"), arguments.max_sequence_length, arguments.negative_prompt)
    pipeline_noise = pipeline.prepare_latents(1, sampler.transformer.config.in_channels, arguments.height,
                                              arguments.width, arguments.num_frames, torch.float32, torch.device("cpu"),
                                              torch.Generator().manual_seed(seed))
    assert torch.equal(initial_noise(sampler, arguments, seed), pipeline_noise) and torch.equal(pipeline_noise, noise)
    assert torch.equal(ode_latents(sampler, arguments, "a dog", seed), latents)

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a dog\n")
    videos = {name: run_sample(arguments, SampleConfig(prompts=str(prompts), output_dir=str(tmp_path / name), seed=seed,
                                                       sampler=name, lossless=True, device="cpu"))
              for name in ("euler_ode", "pipeline")}
    reference = write_video(tmp_path / "reference.mp4", expected, 16.0, lossless=True)
    assert videos["euler_ode"][0].read_bytes() == reference.read_bytes()
    np.testing.assert_array_equal(decoded(videos["euler_ode"][0]), decoded(reference))
    assert not np.array_equal(decoded(videos["pipeline"][0]), decoded(reference))
    record = json.loads((tmp_path / "euler_ode" / SAMPLES_RECORD).read_text())
    assert record["job"] == "tune sample" and record["config"]["sampling"]["sampler"] == "euler_ode"
    assert record["config"]["sampling"]["scheduler"]["class"] == "UniPCMultistepScheduler"
    assert record["config"]["sampling"]["scheduler"]["flow_shift"] == 3.0
    assert (tmp_path / "euler_ode" / INDEX).read_text().splitlines() == ["prompt,seed,file,sampler", "a dog,1003,0000_0.mp4,euler_ode"]


def test_killed_run_resumes_without_redoing_finished_files(tiny_wan_dir, tmp_path, monkeypatch):
    """Killed while encoding the second of two videos (its temporary file left half-written, as a kill
    leaves it): the re-run encodes only the second, leaves the first untouched (inode, mtime, bytes), and
    ends with the files of an uninterrupted run (lossless, so equal files mean equal frames)."""
    arguments, prompts = tiny_policy_arguments(tiny_wan_dir), tmp_path / "prompts.txt"
    prompts.write_text("a red square\na dog\n")
    config = {"prompts": str(prompts), "seed": 11, "lossless": True, "device": "cpu"}
    straight = run_sample(arguments, SampleConfig(output_dir=str(tmp_path / "straight"), **config))
    encoded, left_behind = [], []

    def killed_on_second(path, frames, fps, **options):
        encoded.append(Path(path).name)
        written = write_video(path, frames, fps, **options)
        if len(encoded) == 2 and not left_behind:
            left_behind.append(written.read_bytes()[: written.stat().st_size // 2])  # what a kill mid-encode leaves
            raise Preempted("simulated kill while encoding the second video")
        return written

    monkeypatch.setattr(sample_module, "write_video", killed_on_second)
    out = tmp_path / "resumed"
    with pytest.raises(Preempted):
        run_sample(arguments, SampleConfig(output_dir=str(out), **config))
    assert encoded == [".0000_0.mp4.partial.mp4", ".0001_0.mp4.partial.mp4"]
    assert sorted(path.name for path in out.iterdir()) == ["0000_0.mp4", SAMPLES_RECORD]
    (out / ".0001_0.mp4.partial.mp4").write_bytes(left_behind[0])
    finished = {"0000_0.mp4": fingerprint(out / "0000_0.mp4")}

    encoded.clear()
    resumed = run_sample(arguments, SampleConfig(output_dir=str(out), **config))
    assert encoded == [".0001_0.mp4.partial.mp4"]
    assert {name: fingerprint(out / name) for name in finished} == finished
    assert [path.read_bytes() for path in resumed] == [path.read_bytes() for path in straight]
    assert (out / INDEX).read_text() == (tmp_path / "straight" / INDEX).read_text()
    assert sorted(path.name for path in out.iterdir()) == sorted(path.name for path in (tmp_path / "straight").iterdir())


@pytest.mark.slow  # a subprocess loads the model, then the resume samples the rest: about 30 s on shared CPUs
def test_a_sigkilled_run_resumes_without_redoing_finished_files(tiny_wan_dir, tmp_path):
    """A real kill: SIGKILL the sampling process as soon as its first video is on disk. Whatever it was
    encoding is not taken as finished; the re-run leaves the finished files untouched and completes the rest."""
    prompts, out = tmp_path / "prompts.txt", tmp_path / "videos"
    prompts.write_text("a red square\na dog\nrain at night\n")
    worker = str(Path(__file__).with_name("sample_worker.py"))
    process = subprocess.Popen([sys.executable, worker, str(tiny_wan_dir), str(prompts), str(out), "lossless=true"],
                               env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not (out / "0000_0.mp4").exists() and process.poll() is None:
            time.sleep(0.02)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finished = sorted(path.name for path in out.glob("[0-9]*.mp4"))
    assert 1 <= len(finished) < 3, finished  # killed mid-way
    untouched = {name: fingerprint(out / name) for name in finished}
    videos = run_sample(tiny_policy_arguments(tiny_wan_dir),
                        SampleConfig(prompts=str(prompts), output_dir=str(out), lossless=True, device="cpu"))
    assert {name: fingerprint(out / name) for name in finished} == untouched
    assert sorted(path.name for path in out.iterdir()) == ["0000_0.mp4", "0001_0.mp4", "0002_0.mp4", INDEX, SAMPLES_RECORD]
    assert [len(decoded(video)) for video in videos] == [9, 9, 9]


def test_rerun_with_other_settings_is_refused_and_overwrite_starts_afresh(tiny_wan_dir, tmp_path, monkeypatch):
    arguments, prompts = tiny_policy_arguments(tiny_wan_dir), tmp_path / "prompts.txt"
    prompts.write_text("a red square\n")
    out = tmp_path / "videos"
    common = {"prompts": str(prompts), "output_dir": str(out), "seed": 5, "device": "cpu"}
    first = run_sample(arguments, SampleConfig(**common))
    record = json.loads((out / SAMPLES_RECORD).read_text())["config"]
    assert record["model"] == {"model": str(tiny_wan_dir), "lora": None, "lora_fingerprint": None}
    assert record["plan"]["videos"] == [{"prompt": "a red square", "k": 0, "seed": 5, "file": "0000_0.mp4"}]
    before = listing(out)
    monkeypatch.setattr(WanPipeline, "from_pretrained", _no_model_load)
    assert run_sample(arguments, SampleConfig(**common)) == first  # finished: nothing to sample, no model loads
    with pytest.raises(RunMismatchError) as raised:
        run_sample(arguments, SampleConfig(**common, sampler="euler_ode", file_naming="vbench"))
    message = str(raised.value)
    assert "sampling.sampler: pipeline -> euler_ode" in message and "plan.file_naming: index -> vbench" in message
    assert "pass --overwrite true to sample everything again" in message
    assert listing(out) == before
    monkeypatch.undo()
    (out / "notes.txt").write_text("mine")
    again = run_sample(arguments, SampleConfig(**common, sampler="euler_ode", file_naming="vbench", overwrite=True))
    assert again == [out / "videos" / "a red square-0.mp4"]
    assert sorted(listing(out)) == [INDEX, "notes.txt", SAMPLES_RECORD, "videos/a red square-0.mp4"]


def listing(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_overwrite_writes_into_a_foreign_folder_and_keeps_its_files(tiny_wan_dir, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red square\n")
    run_sample(tiny_policy_arguments(tiny_wan_dir),
               SampleConfig(prompts=str(prompts), output_dir=str(foreign), overwrite=True, device="cpu"))
    assert (foreign / "notes.txt").read_text() == "mine" and (foreign / "0000_0.mp4").is_file()


@pytest.mark.slow  # about a minute on two shared CPU cores: torchrun starts two processes that each load the model
def test_two_processes_write_the_same_files_as_one(tiny_wan_dir, tmp_path):
    """Three videos over two processes (two on one, one on the other): the same files as one process, the
    same index.csv and the same record, because a video's seed does not depend on who samples it. Lossless,
    so that equal files mean equal frames (libx264's lossy output is not reproducible between runs)."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red square\na dog\nrain at night\n")
    settings = ["file_naming=vbench", "seed=21", "lossless=true"]
    worker = str(Path(__file__).with_name("sample_worker.py"))
    one = tmp_path / "one"
    run_sample(tiny_policy_arguments(tiny_wan_dir),
               SampleConfig(prompts=str(prompts), output_dir=str(one), file_naming="vbench", seed=21, lossless=True,
                            device="cpu"))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
               worker, str(tiny_wan_dir), str(prompts), str(tmp_path / "two"), *settings]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=600,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert finished.returncode == 0, finished.stderr[-4000:]
    two = listing(tmp_path / "two")
    assert sorted(two) == sorted(listing(one)) == [
        INDEX, SAMPLES_RECORD, "videos/a dog-0.mp4", "videos/a red square-0.mp4", "videos/rain at night-0.mp4"]
    for name, content in listing(one).items():
        if name == SAMPLES_RECORD:
            assert json.loads(two[name])["config"] == json.loads(content)["config"]
        else:
            assert two[name] == content, name


def test_the_index_is_scored_by_reward_score_with_a_registry_reward(tiny_wan_dir, tmp_path):
    """`tune sample` → `reward score --data index.csv --reward smoothness.yaml`: each video is scored with its
    prompt (paths relative to the index), the rewards are the reward model's own, and the summary table
    lists them."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red square\na dog\n")
    videos = run_sample(tiny_policy_arguments(tiny_wan_dir), SampleConfig(
        prompts=str(prompts), output_dir=str(tmp_path / "samples"), file_naming="vbench", device="cpu"))
    entry = tmp_path / "smoothness.yaml"
    entry.write_text("name: temporal_smoothness\n")
    output = tmp_path / "scores.jsonl"
    summary = run_score(ScoreConfig(data=str(tmp_path / "samples" / INDEX), reward=str(entry), output=str(output)))
    expected = [item.reward for item in build_reward({"name": "temporal_smoothness"}).score(videos, ["", ""]).items]
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [(r["video"], r["prompt"], r["reward"]) for r in records] == [
        (str(videos[0]), "a red square", expected[0]), (str(videos[1]), "a dog", expected[1])]
    report = format_score_report(summary).splitlines()
    assert report[0] == "scored 2 video(s), 0 failed, 0 data row(s) skipped"
    assert report[2].split() == ["reward", "count", "mean", "std", "min", "max", "failures"]
    assert report[3].split() == ["temporal_smoothness", "2", *(f"{value:.4g}" for value in (
        (expected[0] + expected[1]) / 2, abs(expected[0] - expected[1]) / 2 ** 0.5, min(expected), max(expected))), "0"]
