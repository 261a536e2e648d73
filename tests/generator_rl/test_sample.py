"""`tune sample`: values are checked when the arguments are built, the output folder before the model loads;
a folder the command did not write is refused (and left alone) unless --overwrite, its own earlier output is
reused, and samples.json records what was sampled."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import WanPipeline

from generator_rl.sample import SAMPLES_RECORD, SampleConfig, run_sample
from reward.errors import ConfigError

from .test_policy import tiny_policy_arguments


def _no_model_load(*args, **kwargs):
    raise AssertionError("the model was loaded before the bad value was refused")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"prompts": None}, "--prompts and --output_dir are required"),
        ({"videos_per_prompt": 0}, "videos_per_prompt must be an integer >= 1, got 0"),
        ({"videos_per_prompt": -3}, "videos_per_prompt must be an integer >= 1, got -3"),
        ({"device": "gpu"}, "device must be cpu or cuda (optionally cuda:N), got 'gpu'"),
        ({"device": "meta"}, "device must be cpu or cuda (optionally cuda:N), got 'meta'"),
        ({"lora": "no/such/lora"}, "--lora no/such/lora is not a folder"),
    ],
)
def test_bad_values_are_refused(tmp_path, overrides, message):
    with pytest.raises(ConfigError) as raised:
        SampleConfig(**{"prompts": "p.txt", "output_dir": str(tmp_path / "out")} | overrides)
    assert message in str(raised.value)


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


def test_own_output_is_reused_and_overwrite_writes_into_a_foreign_folder(tiny_wan_dir, tmp_path):
    policy, prompts = tiny_policy_arguments(tiny_wan_dir), tmp_path / "prompts.txt"
    prompts.write_text("a red square\na dog\n")
    arguments = {"prompts": str(prompts), "seed": 5, "device": "cpu"}
    first = run_sample(policy, SampleConfig(output_dir=str(tmp_path / "videos"), **arguments))
    record = json.loads((tmp_path / "videos" / SAMPLES_RECORD).read_text())
    assert record["model"] == str(tiny_wan_dir) and record["lora"] is None and record["settings"]["num_steps"] == 6
    assert record["videos"] == [{"prompt": "a red square", "seed": 5, "file": "0000_0.mp4"},
                                {"prompt": "a dog", "seed": 1005, "file": "0001_0.mp4"}]
    again = run_sample(policy, SampleConfig(output_dir=str(tmp_path / "videos"), **arguments))
    assert [path.read_bytes() for path in again] == [path.read_bytes() for path in first]  # same seeds, same videos
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    prompts.write_text("a red square\n")
    run_sample(policy, SampleConfig(output_dir=str(foreign), overwrite=True, **arguments))
    assert (foreign / "notes.txt").read_text() == "mine" and (foreign / "0000_0.mp4").is_file()
