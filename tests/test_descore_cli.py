"""The `descore` command line itself: help without heavy imports, --version, shipped recipes, packaging, logging,
and the user's mistakes as one line and exit status 2."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from descore import __version__
from descore.cli import main, run_cli
from descore.commands import COMMANDS, GROUPS
from descore.recipes import JOB_FOLDERS, recipe_dir, recipe_files, resolve_recipe

from .conftest import REPO_ROOT

HEAVY = ("torch", "transformers", "trl", "diffusers", "reward", "generator_rl", "benchmarks")


def run_descore(*argv: str, cwd: Path = REPO_ROOT, flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """``python -m descore ARGV`` in a fresh interpreter that sees this checkout."""
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, *flags, "-m", "descore", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("argv", [["--help"], ["reward", "--help"], ["tune", "--help"], ["--version"], ["recipes"]])
def test_listing_imports_nothing_heavy(argv):
    """`-X importtime` names every module the interpreter imported; none of torch, the libraries or the kit's
    own packages may be among them, so the listing costs only Python's start-up."""
    finished = run_descore(*argv, flags=("-X", "importtime"))
    assert finished.returncode == 0, finished.stderr
    imported = {line.rsplit("|", 1)[1].strip() for line in finished.stderr.splitlines() if line.startswith("import time:")}
    assert "descore.cli" in imported
    assert not {name for name in imported if name.split(".")[0] in HEAVY}


def test_help_lists_every_group_and_command(capsys):
    assert main(["--help"]) == 0
    usage = capsys.readouterr().out
    assert all(f"\n  {name} " in usage for name in [*GROUPS, "demo", "recipes"])
    for group in GROUPS:
        assert main([group, "--help"]) == 0
        listing = capsys.readouterr().out
        assert {line.split()[0] for line in listing.splitlines() if line.startswith("  ")} == {
            key[1] for key in COMMANDS if key[0] == group}


def test_version_names_the_distribution(capsys):
    assert main(["--version"]) == 0
    first, libraries = capsys.readouterr().out.splitlines()
    assert first == f"descore-kit {__version__}" and re.match(r"torch \S+, transformers \S+, diffusers \S+", libraries)


def test_a_command_prints_its_own_help(capsys):
    with pytest.raises(SystemExit) as exit_status:
        main(["reward", "train", "--help"])
    assert exit_status.value.code == 0
    assert "usage: descore reward train" in (help_text := capsys.readouterr().out) and "--lora_rank" in help_text


# ----- the user's mistakes: one line on stderr, exit status 2, no traceback ----------------------------------

USER_ERRORS = [
    ([], r"descore: error: name a group or command: reward, tune, bench, demo, recipes \(see descore --help\)"),
    (["nope"], r"descore: error: unknown group or command 'nope'; choose from reward, tune, bench, demo, recipes"),
    (["reward"], r"descore reward: error: name a command: train, score, export, calibrate, collect-cot, import-official, serve, plan \(see descore reward --help\)"),
    (["tune", "dpo"], r"descore tune: error: unknown command 'dpo'; choose from grpo, flow-dpo, sample, doctor, plan"),
    (["tune", "plan", "--config", "grpo_wan1.3b", "--gpu", "v100"],
     r"descore tune plan: error: unknown gpu 'v100'; choose from h200, h100-80gb, a100-80gb, l40s, 4090"),
    (["tune", "grpo", "--learning_rate", "abc"],
     r"descore tune grpo: error: argument --learning_rate/--learning-rate: invalid float value: 'abc'"),
    (["demo", "--output_dir"], r"descore demo: error: argument --output_dir/--output-dir: expected one argument"),
    (["reward", "train", "--lora_r", "8"],
     r"descore reward train: error: unknown option\(s\): lora_r \(renamed: did you mean lora_rank\?\)"),
    (["demo", "stray"], r"descore demo: error: unexpected argument\(s\): stray \(options are --key value\)"),
    (["reward", "train", "--config", "nope"],
     r"descore reward train: error: --config nope: no such file, and no shipped recipe of that name \(shipped: .*tiny_grpo.*\)"),
    (["reward", "train", "--config"], r"descore reward train: error: --config needs a recipe: .*"),
    (["tune", "sample", "--model", "{tmp}/empty", "--prompts", "{tmp}/missing.txt", "--output_dir", "{tmp}/videos"],
     r"descore tune sample: error: prompt file {tmp}/missing.txt does not exist"),
    (["reward", "export", "--model", "{tmp}/empty", "--output_dir", "{tmp}/out"],
     r"descore reward export: error: {tmp}/empty is not a DeScore checkpoint: descore_config.json is missing"),
    (["reward", "train", "--train_data", "{tmp}/bad.csv", "--output_dir", "{tmp}/run", "--model_name_or_path", "{tmp}/empty",
      "--bf16", "false", "--report_to", "none"], r"descore reward train: error: {tmp}/bad.csv: no data rows"),
    (["tune", "grpo", "--model", "{tmp}/empty", "--prompts", "{tmp}/prompts.txt", "--output_dir", "{tmp}/dpo_run",
      "--rewards", "name=brightness", "--report_to", "none"],
     r"descore tune grpo: error: {tmp}/dpo_run holds a 'flow_dpo' run, not 'tune-grpo'; choose another output folder"),
]


@pytest.fixture
def mistakes_folder(tmp_path: Path) -> Path:
    """An empty model folder, a CSV without rows, a prompt file, and an output folder of another job's run."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.csv").write_text("prompt\n")
    (tmp_path / "prompts.txt").write_text("a cat\n")
    (tmp_path / "dpo_run").mkdir()
    (tmp_path / "dpo_run" / "run_config.json").write_text(json.dumps({"job": "flow_dpo", "config": {}}))
    return tmp_path


@pytest.mark.parametrize(("argv", "message"), USER_ERRORS, ids=[" ".join(argv) or "(nothing)" for argv, _ in USER_ERRORS])
def test_a_users_mistake_is_one_line_and_exit_2(argv, message, mistakes_folder, capsys):
    assert main([token.format(tmp=mistakes_folder) for token in argv]) == 2
    out, err = capsys.readouterr()
    assert re.fullmatch(message.format(tmp=re.escape(str(mistakes_folder))) + "\n", err), err
    assert "Traceback" not in out + err


def test_the_real_process_exits_2_without_a_traceback():
    """`python -m descore` (what `accelerate launch -m descore` runs) reaches the command and maps its error."""
    finished = run_descore("tune", "grpo", "--learning_rate", "abc")
    assert finished.returncode == 2 and "Traceback" not in finished.stderr
    assert finished.stderr.splitlines()[-1] == (
        "descore tune grpo: error: argument --learning_rate/--learning-rate: invalid float value: 'abc'")


def test_debug_anywhere_shows_the_traceback_and_run_cli_raises():
    from reward.errors import ConfigError

    with pytest.raises(ValueError, match="unknown group or command 'nope'"):
        main(["nope", "--debug"])
    with pytest.raises(ConfigError, match="invalid float value: 'abc'"):
        main(["tune", "--debug", "grpo", "--learning_rate", "abc"])
    with pytest.raises(ConfigError, match="invalid float value: 'abc'"):
        run_cli(["tune", "grpo", "--learning_rate", "abc"])


def test_a_bug_keeps_its_traceback(monkeypatch):
    """Only the kit's typed errors and missing files are the user's to fix; anything else propagates."""
    def broken(key, argv):
        raise KeyError("a bug")

    monkeypatch.setattr("descore.cli.run_command", broken)
    with pytest.raises(KeyError, match="a bug"):
        main(["demo"])


# ----- shipped recipes and the wheel's package list -------------------------------------------------------------


def test_bare_names_resolve_to_the_shipped_job_recipes(tmp_path):
    root = recipe_dir()
    jobs = [path for folder in JOB_FOLDERS for path in (root / folder).rglob("*.yaml")]
    assert len({path.stem for path in jobs}) == len(jobs), "two job recipes share a bare name"
    assert resolve_recipe("tiny_grpo") == resolve_recipe("generator/tiny_grpo.yaml") == root / "generator" / "tiny_grpo.yaml"
    mine = tmp_path / "tiny_grpo"
    mine.write_text("seed: 1\n")
    assert resolve_recipe(mine) == mine, "an existing file wins over a shipped name"
    assert "ddp_8gpu" not in recipe_files(), "accelerate configs are not --config recipes"
    with pytest.raises(FileNotFoundError, match="no shipped recipe of that name"):
        resolve_recipe("ddp_8gpu")


def test_recipes_lists_names_and_paths(capsys):
    assert main(["recipes"]) == 0
    listing = capsys.readouterr().out
    assert re.search(rf"\n  tiny_grpo +{re.escape(str(recipe_dir() / 'generator' / 'tiny_grpo.yaml'))}\n", listing)
    assert re.search(rf"\n  ddp_8gpu +{re.escape(str(recipe_dir() / 'accelerate' / 'ddp_8gpu.yaml'))}", listing)


def test_the_wheel_lists_every_package():
    """pyproject lists its packages (a mapped package, descore.configs, is invisible to packages.find): every
    code folder and every recipe folder of the checkout must be in that list, and nothing else."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    listed = set(tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    code = {".".join(path.parent.relative_to(REPO_ROOT).parts) for top in ("descore", "reward", "generator_rl", "benchmarks")
            for path in (REPO_ROOT / top).rglob("__init__.py")}
    recipes = {"descore.configs", *(f"descore.configs.{path.name}" for path in (REPO_ROOT / "configs").iterdir() if path.is_dir())}
    assert listed == code | recipes


# ----- logging above the progress bars --------------------------------------------------------------------------

LOGGING_SCRIPT = """
import logging, sys
from tqdm import tqdm
from descore.cli import _configure_logging, _route_library_logging
import transformers
_configure_logging()
_route_library_logging()
bar = tqdm(total=2, file=sys.stderr)
bar.update(1)
logging.getLogger("reward.jobs").info("kit info")
logging.getLogger("httpx").info("library info")
logging.getLogger("accelerate.state").warning("library warning")
transformers.utils.logging.get_logger("transformers.modeling_utils").info("transformers info")
transformers.utils.logging.get_logger("transformers.modeling_utils").warning("transformers warning")
bar.update(1)
bar.close()
"""


def test_logs_are_written_above_the_bar_and_libraries_say_only_warnings():
    env = os.environ | {"PYTHONPATH": str(REPO_ROOT)}
    finished = subprocess.run([sys.executable, "-c", LOGGING_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    segments = re.split(r"[\r\n]", finished.stderr)
    shown = [segment for segment in segments if re.match(r"\d{4}-\d\d-\d\d [\d:,]+ (INFO|WARNING) ", segment)]
    assert [segment.split(" ", 2)[2] for segment in shown] == [
        "INFO reward.jobs: kit info", "WARNING accelerate.state: library warning",
        "WARNING transformers.modeling_utils: transformers warning"]
    assert "library info" not in finished.stderr and "transformers info" not in finished.stderr
