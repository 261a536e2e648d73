"""The score and export jobs: bad values refused before a model loads, scoring saved as it goes and resumed
after a kill without rescoring, re-runs with other settings refused, export never replacing what it did not
write."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from descore.cli import run_cli
from benchmarks.synthetic import make_preference_set
from reward.cold_start import run
from reward.errors import CheckpointError, ConfigError, DataError
from reward.jobs import EXPORT_MARKER, ExportConfig, ScoreConfig, run_export, run_score
from reward.modeling import HEAD_NAME, DeScoreModel
from reward.run_record import RunMismatchError
from reward.score_output import partial_path, settings_path
from reward.scoring import DeScoreReward

from ..generator_rl.helpers import Preempted, dies_on_call
from .helpers import small_clip, tiny_config, truncated_clip

PROMPTS = ["a red square moving left", "a cat", "a dog on a beach", "rain at night", "a red square"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("job-clips")
    return [str(small_clip(root / f"{i}.mp4", seed=i)) for i in range(len(PROMPTS))]


class Calls:
    """Counts the calls of a real method (which still runs): how often the model loads, generates, scores."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, owner: type, name: str) -> None:
        self.count = 0
        original = getattr(owner, name)

        def counted(*args, **kwargs):
            self.count += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, counted)


def score_config(checkpoint: Path, clips: list[str], output: Path, **overrides) -> ScoreConfig:
    """Five clips in batches of two: three batches, the last one short."""
    values = {"prompt": PROMPTS, "cot": True, "max_new_tokens": 4, "batch_size": 2, "device": "cpu"} | overrides
    return ScoreConfig(model=str(checkpoint), video=clips, output=str(output), **values)


def listing(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes: equal listings mean nothing was added, changed or removed."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


# ----- values checked before any model loads ---------------------------------------------------------------


def _bad_score_flags(tmp_path: Path, checkpoint: Path, clips: list[str], base_model: Path) -> dict[str, tuple]:
    """name -> (flags that replace the defaults, error type, message pattern)."""
    folder = tmp_path / "a-folder"
    folder.mkdir()
    return {
        "batch_size 0": ({"--batch_size": "0"}, ConfigError, r"--batch_size must be >= 1, got 0"),
        "max_new_tokens 0": ({"--max_new_tokens": "0"}, ConfigError, r"max_new_tokens must be >= 1 .*, got 0"),
        "negative temperature": ({"--temperature": "-0.5"}, ConfigError, r"temperature must be >= 0 .*, got -0.5"),
        "repetition_penalty 0": ({"--repetition_penalty": "0"}, ConfigError, r"repetition_penalty must be > 0 .*, got 0.0"),
        "missing model": ({"--model": str(tmp_path / "nope")}, ConfigError, rf"--model {tmp_path / 'nope'} does not exist"),
        "not a DeScore checkpoint": (
            {"--model": str(base_model)}, CheckpointError, rf"{base_model} is not a DeScore checkpoint: descore_config.json is missing"
        ),
        "output is a folder": ({"--output": str(folder)}, ConfigError, rf"--output {folder} is a folder; give a file path"),
        "unreadable videos": (
            {"--video": [clips[0], str(tmp_path / "missing.mp4"), str(truncated_clip(tmp_path / "cut.mp4"))],
             "--prompt": ["a cat"]},
            DataError, r"2 --video file\(s\) cannot be read:\n  .*missing\.mp4: no such file\n  .*cut\.mp4: ",
        ),
    }


BAD_SCORE_CASES = ["batch_size 0", "max_new_tokens 0", "negative temperature", "repetition_penalty 0", "missing model",
                   "not a DeScore checkpoint", "output is a folder", "unreadable videos"]


@pytest.mark.parametrize("case", BAD_SCORE_CASES)
def test_bad_score_values_are_refused_before_any_model_loads(case, checkpoint, clips, tiny_qwen3_vl_dir, tmp_path, monkeypatch):
    changes, error, message = _bad_score_flags(tmp_path, checkpoint, clips, tiny_qwen3_vl_dir)[case]
    flags = {"--model": str(checkpoint), "--video": clips, "--prompt": PROMPTS, "--output": str(tmp_path / "s.jsonl"),
             "--device": "cpu"} | changes
    argv = ["reward", "score"] + [token for flag, value in flags.items() for token in [flag, *([value] if isinstance(value, str) else value)]]
    loads = Calls(monkeypatch, DeScoreModel, "from_pretrained")
    with pytest.raises(error, match=message):
        run_cli(argv)
    assert loads.count == 0
    assert not any(path.name.startswith("s.jsonl") for path in tmp_path.iterdir()), "nothing may be written"



@pytest.mark.parametrize("case", ["missing model", "not a DeScore checkpoint", "output is a file", "output is the model"])
def test_bad_export_values_are_refused_before_any_model_loads(case, checkpoint, tiny_qwen3_vl_dir, tmp_path, monkeypatch):
    a_file = tmp_path / "weights.bin"
    a_file.write_text("x")
    model, output, error, message = {
        "missing model": (tmp_path / "nope", tmp_path / "out", ConfigError, rf"--model {tmp_path / 'nope'} does not exist"),
        "not a DeScore checkpoint": (tiny_qwen3_vl_dir, tmp_path / "out", CheckpointError, "descore_config.json is missing"),
        "output is a file": (checkpoint, a_file, ConfigError, rf"--output_dir {a_file} is a file; give a folder path"),
        "output is the model": (checkpoint, checkpoint.parent, ConfigError, "holds the checkpoint being exported"),
    }[case]
    loads = Calls(monkeypatch, DeScoreModel, "from_pretrained")
    with pytest.raises(error, match=message):
        run_cli(["reward", "export", "--model", str(model), "--output_dir", str(output), "--overwrite", "true"])
    assert loads.count == 0 and not (tmp_path / "out").exists() and a_file.read_text() == "x"

# ----- scoring is saved as it goes and resumed ---------------------------------------------------------------


def test_killed_scoring_resumes_without_rescoring(checkpoint, clips, tmp_path, monkeypatch):
    """Killed in its second batch, the run has the first batch on disk; the re-run scores only batches two
    and three (counted model calls) and writes the same file, byte for byte, as an uninterrupted run."""
    straight = run_score(score_config(checkpoint, clips, tmp_path / "straight.jsonl"))
    output = tmp_path / "s.jsonl"
    with monkeypatch.context() as patch:
        patch.setattr(DeScoreReward, "head_rewards", dies_on_call(DeScoreReward.head_rewards, 2))
        with pytest.raises(Preempted):
            run_score(score_config(checkpoint, clips, output))
    saved = [json.loads(line) for line in partial_path(output).read_text().splitlines()]
    assert [record["video"] for record in saved] == clips[:2] and not output.exists()
    with partial_path(output).open("a") as handle:
        handle.write('{"video": "' + clips[2])  # a line cut short by the kill
    generated, scored = Calls(monkeypatch, DeScoreReward, "generate_cots"), Calls(monkeypatch, DeScoreReward, "head_rewards")
    resumed = run_score(score_config(checkpoint, clips, output))
    assert (generated.count, scored.count) == (2, 2)
    assert output.read_bytes() == (tmp_path / "straight.jsonl").read_bytes()
    assert not partial_path(output).exists()
    assert (resumed.resumed, resumed.scored, resumed.failed) == (2, 5, 0) and straight.resumed == 0
    assert resumed.parse_failure_rate == straight.parse_failure_rate == 1.0


def test_finished_output_is_not_scored_again(checkpoint, clips, tmp_path, monkeypatch):
    output = tmp_path / "s.jsonl"
    run_score(score_config(checkpoint, clips, output, cot=False))
    before = output.read_bytes()
    loads = Calls(monkeypatch, DeScoreModel, "from_pretrained")
    again = run_score(score_config(checkpoint, clips, output, cot=False, batch_size=3))  # batch size may change
    assert loads.count == 0 and (again.resumed, again.scored) == (5, 5)
    assert output.read_bytes() == before
    fewer = run_score(score_config(checkpoint, clips[:2], output, cot=False, prompt=PROMPTS[:2]))
    assert loads.count == 0 and fewer.scored == 2
    assert output.read_bytes() == before, "lines of items this run did not ask for are kept, not dropped"


def test_rerun_with_other_settings_is_refused_unless_overwrite(checkpoint, clips, tmp_path, monkeypatch):
    output = tmp_path / "s.jsonl"
    run_score(score_config(checkpoint, clips, output))
    before = output.read_bytes()
    loads = Calls(monkeypatch, DeScoreModel, "from_pretrained")
    with pytest.raises(RunMismatchError) as refused:
        run_score(score_config(checkpoint, clips, output, cot=False))
    assert "scoring.cot: true -> false" in str(refused.value) and "scoring.generation: " in str(refused.value)
    assert "--overwrite true" in str(refused.value)
    with pytest.raises(RunMismatchError, match=r"scoring.generation: .*\"repetition_penalty\": 1.05.* -> .*\"repetition_penalty\": 1.2"):
        run_score(score_config(checkpoint, clips, output, repetition_penalty=1.2))
    assert loads.count == 0 and output.read_bytes() == before
    replaced = run_score(score_config(checkpoint, clips, output, cot=False, overwrite=True))
    assert replaced.resumed == 0 and loads.count == 1
    assert all(json.loads(line)["cot"] is None for line in output.read_text().splitlines())
    recorded = json.loads(settings_path(output).read_text())
    assert recorded["job"] == "reward score" and recorded["config"]["scoring"]["cot"] is False



def test_a_checkpoint_changed_in_place_is_a_different_model(checkpoint, clips, tmp_path):
    """Same path, retrained head: the output's lines came from another model, so the re-run is refused."""
    model = tmp_path / "ckpt"
    shutil.copytree(checkpoint, model)
    output = tmp_path / "s.jsonl"
    run_score(score_config(model, clips[:1], output, cot=False, prompt=PROMPTS[:1]))
    head = load_file(model / HEAD_NAME)
    save_file({"weight": head["weight"] * 2}, model / HEAD_NAME)
    with pytest.raises(RunMismatchError, match=r"model.fingerprint: [0-9a-f]{64} -> [0-9a-f]{64}"):
        run_score(score_config(model, clips[:1], output, cot=False, prompt=PROMPTS[:1]))

def test_output_written_by_something_else_is_not_taken_over(checkpoint, clips, tmp_path):
    output = tmp_path / "notes.jsonl"
    output.write_text('{"mine": 1}\n')
    with pytest.raises(RunMismatchError, match=r"notes.jsonl exists but has no notes.jsonl.settings.json"):
        run_score(score_config(checkpoint, clips, output, cot=False))
    assert output.read_text() == '{"mine": 1}\n'


def test_items_that_failed_to_load_are_tried_again(checkpoint, clips, tmp_path, monkeypatch):
    late = tmp_path / "late.mp4"
    videos = clips[:2] + [str(late)]
    output = tmp_path / "s.jsonl"
    first = run_score(score_config(checkpoint, videos, output, cot=False, prompt=["a cat"], skip_invalid=True))
    assert (first.scored, first.failed) == (2, 1)
    assert "no such file" in json.loads(output.read_text().splitlines()[2])["error"]
    shutil.copy(clips[2], late)
    scored = Calls(monkeypatch, DeScoreReward, "head_rewards")
    second = run_score(score_config(checkpoint, videos, output, cot=False, prompt=["a cat"], skip_invalid=True))
    assert scored.count == 1 and (second.resumed, second.scored, second.failed) == (2, 3, 0)
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [record["video"] for record in records] == videos and "error" not in records[2]


# ----- export never replaces what it did not write -------------------------------------------------------------


@pytest.fixture(scope="module")
def run_folder(tiny_qwen3_vl_dir, tmp_path_factory) -> Path:
    """A real (one-step) stage-1 training run folder: checkpoints, final/, run record."""
    root = tmp_path_factory.mktemp("train")
    data = make_preference_set(root / "data", pairs=8, seed=0, file_name="train.csv")
    run(tiny_config(tiny_qwen3_vl_dir, data, root / "run", max_steps=1, eval_strategy="no", save_strategy="steps",
                    save_steps=1))
    return root / "run"


def test_export_onto_a_run_folder_refuses_and_deletes_nothing(checkpoint, run_folder, monkeypatch):
    before = listing(run_folder)
    loads = Calls(monkeypatch, DeScoreModel, "from_pretrained")
    for flags in ([], ["--overwrite", "true"]):
        with pytest.raises(ConfigError, match=rf"--output_dir {run_folder} is a training run or checkpoint folder"):
            run_cli(["reward", "export", "--model", str(checkpoint), "--output_dir", str(run_folder), *flags])
    with pytest.raises(ConfigError, match=r"holds the checkpoint being exported"):
        run_cli(["reward", "export", "--model", str(run_folder / "final"), "--output_dir", str(run_folder / "final")])
    assert loads.count == 0 and listing(run_folder) == before


def test_export_replaces_only_its_own_output_or_with_overwrite(checkpoint, tmp_path):
    target = tmp_path / "plain"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match=rf"--output_dir {target} already holds files this command did not write "
                                          rf"\(no {EXPORT_MARKER}\)"):
        ExportConfig(model=str(checkpoint), output_dir=str(target))
    assert listing(target) == {"notes.txt": b"keep me"}
    run_export(ExportConfig(model=str(checkpoint), output_dir=str(target), overwrite=True))
    marker = json.loads((target / EXPORT_MARKER).read_text())
    assert marker["source_model"] == str(checkpoint.resolve()) and "torch" in marker["versions"]
    assert not (target / "notes.txt").exists() and (target / "model.safetensors").is_file()
    weights = (target / "model.safetensors").read_bytes()
    run_export(ExportConfig(model=str(checkpoint), output_dir=str(target)))  # an earlier export may be replaced
    assert (target / "model.safetensors").read_bytes() == weights and (target / EXPORT_MARKER).is_file()


def test_decode_limits_from_the_command_line_name_file_and_limit(checkpoint, clips, tmp_path, monkeypatch):
    """`--max_video_frame_pixels 1000` (the clips are 64x64 = 4096 px): every file is refused before the model
    loads, each named with its size and the limit; a limit that is not positive is a config error."""
    loads = Calls(monkeypatch, DeScoreModel, "from_pretrained")
    flags = ["reward", "score", "--model", str(checkpoint), "--video", *clips, "--prompt", "a cat",
             "--output", str(tmp_path / "s.jsonl"), "--max_video_frame_pixels", "1000"]
    with pytest.raises(DataError) as raised:
        run_cli(flags)
    message = str(raised.value)
    assert message.startswith(f"{len(clips)} --video file(s) cannot be read") and len(clips) == 5
    assert message.count("its frame size 64x64 = 4,096 px exceeds DecodeLimits.max_pixels_per_frame = 1,000 px") == 5
    assert all(f"{clip}: its frame size" in message for clip in clips)
    assert message.count("pass --max_video_frame_pixels 4096 (command line)") == 5  # what would admit the files
    assert loads.count == 0
    with pytest.raises(ConfigError, match="DecodeLimits.max_duration_s must be a positive number, got 0.0"):
        run_cli([*flags, "--max_video_duration_s", "0"])
