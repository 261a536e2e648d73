"""The `descore` command line: group/command tables, YAML + flag parsing, exit codes, and scoring from flags."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from benchmarks.cli import main
from reward.errors import ConfigError
from reward.modeling import DeScoreModel, save_descore

from .conftest import TINY_SPEC
from .reward.helpers import REPO_ROOT, small_clip


def test_help_lists_groups_and_commands(capsys):
    assert main(["--help"]) == 0
    assert "reward" in capsys.readouterr().out
    assert main(["reward", "--help"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in ("train", "score", "export"))


def test_unknown_group_or_command_exits_2(capsys):
    assert main(["nope"]) == 2 and "unknown group 'nope'" in capsys.readouterr().err
    assert main(["reward", "nope"]) == 2 and "unknown command 'nope'" in capsys.readouterr().err


def test_unknown_flag_is_an_error():
    with pytest.raises(ConfigError, match=r"lora_rnak \(did you mean .*\blora_rank\b"):
        main(["reward", "train", "--train_data", "t.csv", "--output_dir", "o", "--lora_rnak", "8"])


@pytest.mark.parametrize(("argv", "old", "new"), [
    (["reward", "train", "--train_data", "t.csv", "--output_dir", "o", "--lora_r", "8"], "lora_r", "lora_rank"),
    (["tune", "grpo", "--save_every", "5"], "save_every", "save_steps"),
    (["tune", "flow-dpo", "--log_every", "5"], "log_every", "logging_steps"),
    (["tune", "sample", "--out", "videos"], "out", "output_dir"),
    (["reward", "export", "--output", "plain"], "output", "output_dir"),
])
def test_old_option_names_point_at_the_new_ones(argv, old, new):
    with pytest.raises(ConfigError, match=rf"unknown option\(s\): {old} \(renamed: did you mean {new}\?\)"):
        main(argv)


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
        main(["reward", "score", "--model", "m", "--video", "a.mp4", "b.mp4", "--prompt", "x", "y", "z",
              "--output", str(tmp_path / "o.jsonl")])


def test_console_script_runs():
    finished = subprocess.run([sys.executable, "-m", "benchmarks.cli", "reward", "--help"], cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0 and "score" in finished.stdout


def test_tune_group_lists_its_commands(capsys):
    assert main(["tune", "--help"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in ("grpo", "flow-dpo", "sample", "doctor"))


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
