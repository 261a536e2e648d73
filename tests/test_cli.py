"""The `descore` jobs run from the command line: YAML + flag parsing, renamed options, scoring, export and sampling."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from descore.cli import main, parse_command, run_cli
from descore.commands import COMMANDS
from reward.errors import ConfigError
from reward.modeling import DeScoreModel, save_descore

from .conftest import TINY_SPEC
from .reward.helpers import REPO_ROOT, small_clip


def test_unknown_flag_is_an_error():
    with pytest.raises(ConfigError, match=r"lora_rnak \(did you mean .*\blora_rank\b"):
        run_cli(["reward", "train", "--train_data", "t.csv", "--output_dir", "o", "--lora_rnak", "8"])


@pytest.mark.parametrize(("argv", "old", "new"), [
    (["reward", "train", "--train_data", "t.csv", "--output_dir", "o", "--lora_r", "8"], "lora_r", "lora_rank"),
    (["tune", "grpo", "--save_every", "5"], "save_every", "save_steps"),
    (["tune", "flow-dpo", "--log_every", "5"], "log_every", "logging_steps"),
    (["tune", "sample", "--out", "videos"], "out", "output_dir"),
    (["reward", "export", "--output", "plain"], "output", "output_dir"),
])
def test_old_option_names_point_at_the_new_ones(argv, old, new):
    with pytest.raises(ConfigError, match=rf"unknown option\(s\): {old} \(renamed: did you mean {new}\?\)"):
        run_cli(argv)


def test_score_and_export_from_flags(tiny_qwen3_vl_dir, tmp_path, capsys):
    torch.manual_seed(0)
    checkpoint = save_descore(DeScoreModel.from_base(str(tiny_qwen3_vl_dir), video_spec=TINY_SPEC), tmp_path / "ckpt")
    clips = [str(small_clip(tmp_path / f"{i}.mp4", seed=i)) for i in range(2)]
    output = tmp_path / "scores.jsonl"
    assert main(["reward", "score", "--model", str(checkpoint), "--video", *clips, "--prompt", "a red square",
                 "--no-cot", "--output", str(output), "--device", "cpu"]) == 0
    assert "scored 2 video(s), 0 failed" in capsys.readouterr().out
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [record["video"] for record in records] == clips and all(isinstance(r["reward"], float) for r in records)
    assert main(["reward", "export", "--model", str(checkpoint), "--output_dir", str(tmp_path / "plain"), "--merged"]) == 0
    assert (tmp_path / "plain" / "model.safetensors").is_file() and (tmp_path / "plain" / "tokenizer.json").is_file()


def test_score_rejects_mismatched_prompts(tmp_path):
    with pytest.raises(ValueError, match="--prompt needs 1 or 2 values"):
        run_cli(["reward", "score", "--model", "m", "--video", "a.mp4", "b.mp4", "--prompt", "x", "y", "z",
                 "--output", str(tmp_path / "o.jsonl")])


def test_tune_sample_from_flags(tmp_path, capsys):
    from generator_rl.tiny_wan import save_tiny_wan

    model = save_tiny_wan(tmp_path / "wan")
    prompts = tmp_path / "p.csv"
    prompts.write_text("prompt,extra\na red square,1\na dog,2\n")
    assert main(["tune", "sample", "--config", str(REPO_ROOT / "configs" / "generator" / "tiny_grpo.yaml"),
                 "--model", str(model), "--prompts", str(prompts), "--output_dir", str(tmp_path / "videos"),
                 "--device", "cpu"]) == 0
    assert "wrote 2 video(s)" in capsys.readouterr().out
    index = (tmp_path / "videos" / "index.csv").read_text().splitlines()
    assert index == ["prompt,seed,file,sampler", "a red square,0,0000_0.mp4,pipeline", "a dog,1000,0001_0.mp4,pipeline"]


def test_sample_reads_a_training_recipe_but_not_its_output_dir(tmp_path):
    """`tune sample --config tiny_grpo` (a shipped name) takes the model and sampling settings of the training
    recipe, ignores its training-only keys, and never writes videos into the recipe's output_dir (where that
    training writes): the output folder comes from the command line only."""
    recipe = yaml.safe_load((REPO_ROOT / "configs" / "generator" / "tiny_grpo.yaml").read_text())
    sample = COMMANDS["tune", "sample"]
    flags = ["--config", "tiny_grpo", "--model", str(tmp_path)]  # any existing folder: nothing is loaded
    policy, settings = parse_command(sample, [*flags, "--output_dir", str(tmp_path / "videos")], prog="descore tune sample")
    assert (policy.height, policy.num_frames, policy.lora_rank) == (recipe["height"], recipe["num_frames"], recipe["lora_rank"])
    assert settings.output_dir == str(tmp_path / "videos") and recipe["output_dir"]
    with pytest.raises(ConfigError, match="--output_dir are required"):
        parse_command(sample, flags, prog="descore tune sample")
