"""DeScore checkpoints by hub id: resolved through the hub cache (here a real cache layout built on disk, with
offline mode on, so no request is made), the same rewards as the folder, a clear error when offline mode
cannot find the id, a local folder winning over a same-named id, and score records naming id + commit."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub import scan_cache_dir
from safetensors.torch import load_file, save_file

import reward
from descore.cli import run_cli
from reward.checkpoint import resolve_model_source
from reward.errors import CheckpointError, ConfigError
from reward.jobs import EXPORT_MARKER, ExportConfig, ScoreConfig, check_checkpoint, run_export
from reward.modeling import HEAD_NAME, DeScoreModel
from reward.run_record import RunMismatchError
from reward.score_output import checkpoint_fingerprint, settings_path

from .helpers import REPO_ROOT, small_clip

REPO_ID = "descore-tests/tiny-descore"
FIRST_COMMIT = "1" * 40
SECOND_COMMIT = "2" * 40
PROMPTS = ["a red square moving left", "a cat"]


def add_to_hub_cache(folder: Path, cache: Path, repo_id: str, commit: str, *, branch: str = "main") -> Path:
    """Put ``folder`` into ``cache`` as the hub would: ``models--owner--name/blobs/<sha256>`` holds each file,
    ``snapshots/<commit>/<file>`` links to its blob, and ``refs/<branch>`` names the commit. Returns the
    snapshot folder."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        blob = repo / "blobs" / hashlib.sha256(path.read_bytes()).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, blob)
        link = snapshot / path.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path("../" * len(link.relative_to(repo).parts[1:]), "blobs", blob.name))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / branch).write_text(commit)
    return snapshot


@pytest.fixture
def offline_cache(tmp_path, monkeypatch) -> Path:
    """An empty hub cache with offline mode on, as ``HF_HUB_CACHE=… HF_HUB_OFFLINE=1`` set before start-up
    would give (huggingface_hub reads both once, at import)."""
    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("hub-clips")
    return [str(small_clip(root / "a.mp4", seed=1)), str(small_clip(root / "b.mp4", seed=2))]


def negated_head_copy(checkpoint: Path, target: Path) -> Path:
    """A copy of ``checkpoint`` with the head weight negated: every reward exactly changes sign."""
    shutil.copytree(checkpoint, target)
    head = load_file(target / HEAD_NAME)
    save_file({"weight": -head["weight"]}, target / HEAD_NAME)
    return target


def no_cot_rewards(source: str | Path, clips: list[str], **options) -> torch.Tensor:
    """Rewards of the one-forward mode, through ``reward.load`` as a user calls it."""
    return reward.load(str(source), cot=False, device="cpu", **options).score(clips, PROMPTS).rewards


def test_the_cache_layout_is_the_hubs(checkpoint, offline_cache):
    """huggingface_hub's own cache scanner reads the layout the tests build as one repo at one revision."""
    add_to_hub_cache(checkpoint, offline_cache, REPO_ID, FIRST_COMMIT)
    (repo,) = scan_cache_dir(offline_cache).repos
    (revision,) = repo.revisions
    assert (repo.repo_id, revision.commit_hash, revision.refs) == (REPO_ID, FIRST_COMMIT, frozenset({"main"}))
    assert {file.file_name for file in revision.files} == {p.name for p in checkpoint.iterdir() if p.is_file()}


def test_a_hub_id_scores_exactly_like_the_folder_it_came_from(checkpoint, clips, offline_cache):
    snapshot = add_to_hub_cache(checkpoint, offline_cache, REPO_ID, FIRST_COMMIT)
    assert resolve_model_source(REPO_ID) == (snapshot, REPO_ID, FIRST_COMMIT)
    assert resolve_model_source(REPO_ID, revision=FIRST_COMMIT).folder == snapshot
    expected = no_cot_rewards(checkpoint, clips)
    by_id = no_cot_rewards(REPO_ID, clips)
    by_registry = reward.build_reward(
        {"name": "descore_no_cot", "path": REPO_ID, "revision": "main", "device": "cpu"}
    ).score(clips, PROMPTS).rewards
    assert torch.isfinite(expected).all()
    assert torch.equal(by_id, expected) and torch.equal(by_registry, expected)
    check_checkpoint(REPO_ID)  # found in the cache: no error, no request


def test_an_id_missing_in_offline_mode_names_the_id_and_offline_mode(checkpoint, offline_cache):
    add_to_hub_cache(checkpoint, offline_cache, REPO_ID, FIRST_COMMIT)
    absent = "descore-tests/not-downloaded"
    message = (rf"{absent} is neither a local folder nor complete in the hub cache \({offline_cache}\), and offline "
               r"mode is on \(HF_HUB_OFFLINE=1\)")
    with pytest.raises(CheckpointError, match=message):
        reward.load(absent, cot=False, device="cpu")
    with pytest.raises(CheckpointError, match=rf"{REPO_ID} \(revision v2\) is neither a local folder nor complete"):
        DeScoreModel.from_pretrained(REPO_ID, revision="v2")
    # The score job refuses before anything loads, in the words of the model-source check.
    refused = rf"--model: {absent} is neither a local folder nor in the hub cache, and HF_HUB_OFFLINE is set"
    with pytest.raises(ConfigError, match=refused):
        ScoreConfig(model=absent, video=["clip.mp4"], prompt=["a cat"], output="s.jsonl")
    with pytest.raises(ConfigError, match=r"runs/nowhere/final does not exist \(and is not a hub id"):
        resolve_model_source("runs/nowhere/final")


def test_a_local_folder_wins_over_the_same_hub_id(checkpoint, clips, offline_cache, tmp_path, monkeypatch):
    """The cache holds the checkpoint; ./descore-tests/tiny-descore holds it with the head negated. The id
    loads the folder, so every reward changes sign exactly."""
    add_to_hub_cache(checkpoint, offline_cache, REPO_ID, FIRST_COMMIT)
    monkeypatch.chdir(tmp_path)
    negated_head_copy(checkpoint, tmp_path / REPO_ID)
    assert resolve_model_source(REPO_ID) == (Path(REPO_ID), None, None)
    assert torch.equal(no_cot_rewards(REPO_ID, clips), -no_cot_rewards(checkpoint, clips))
    with pytest.raises(ConfigError, match=rf"revision 'main' applies to a hub id, but {REPO_ID} is a local folder"):
        resolve_model_source(REPO_ID, revision="main")
    with pytest.raises(ConfigError, match=rf"--revision main applies to a hub id, but --model {REPO_ID} is a local folder"):
        check_checkpoint(REPO_ID, revision="main")


def test_scores_by_hub_id_record_id_and_commit_and_resume(checkpoint, clips, offline_cache, tmp_path, monkeypatch):
    """`descore reward score --model owner/name`: the settings record names the id, the snapshot commit and
    the content fingerprint (not the cache path); a re-run resumes; after the branch moves to a commit with
    another head, a re-run into the same output is refused."""
    add_to_hub_cache(checkpoint, offline_cache, REPO_ID, FIRST_COMMIT)
    output = tmp_path / "scores.jsonl"
    argv = ["reward", "score", "--model", REPO_ID, "--video", *clips, "--prompt", *PROMPTS, "--output", str(output),
            "--cot", "false", "--device", "cpu"]
    run_cli(argv)
    record = json.loads(settings_path(output).read_text())
    assert record["config"]["model"] == {
        "path": REPO_ID, "revision": FIRST_COMMIT, "fingerprint": checkpoint_fingerprint(checkpoint)
    }
    expected = no_cot_rewards(checkpoint, clips)
    assert [json.loads(line)["reward"] for line in output.read_text().splitlines()] == expected.tolist()

    loads = []
    load = DeScoreModel.from_pretrained
    monkeypatch.setattr(DeScoreModel, "from_pretrained", lambda *args, **kwargs: loads.append(args) or load(*args, **kwargs))
    run_cli(argv)  # everything was scored with this very checkpoint: the model is not even loaded
    add_to_hub_cache(negated_head_copy(checkpoint, tmp_path / "retrained"), offline_cache, REPO_ID, SECOND_COMMIT)
    moved = rf"model.fingerprint: .*\n  model.revision: {FIRST_COMMIT} -> {SECOND_COMMIT}"
    with pytest.raises(RunMismatchError, match=moved):
        run_cli(argv)
    assert loads == []


def test_export_from_a_hub_id_records_id_and_commit(checkpoint, clips, offline_cache, tmp_path):
    add_to_hub_cache(checkpoint, offline_cache, REPO_ID, FIRST_COMMIT)
    output = run_export(ExportConfig(model=REPO_ID, output_dir=str(tmp_path / "export")))
    marker = json.loads((output / EXPORT_MARKER).read_text())
    assert (marker["source_model"], marker["source_revision"]) == (REPO_ID, FIRST_COMMIT)
    assert marker["source_fingerprint"] == checkpoint_fingerprint(checkpoint)
    assert torch.equal(no_cot_rewards(output, clips), no_cot_rewards(checkpoint, clips))


@pytest.mark.slow  # a fresh interpreter imports torch and transformers: about 30 s on a shared CPU
def test_offline_mode_from_the_environment_of_a_fresh_process(checkpoint, clips, tmp_path):
    """What a user runs: `HF_HUB_OFFLINE=1 HF_HUB_CACHE=… descore reward score --model owner/name`, in a new
    process that reads the variables at start-up. The cached id scores like the folder; an id not in the
    cache fails with the error naming it and offline mode."""
    cache = tmp_path / "hub-cache"
    add_to_hub_cache(checkpoint, cache, REPO_ID, FIRST_COMMIT)
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "PYTHONPATH": str(REPO_ROOT)}
    output = tmp_path / "scores.jsonl"
    script = (
        "import sys, reward; from descore.cli import run_cli; run_cli(sys.argv[1:]); "
        "reward.load('descore-tests/not-downloaded', cot=False, device='cpu')"
    )
    argv = ["reward", "score", "--model", REPO_ID, "--video", *clips, "--prompt", *PROMPTS, "--output", str(output),
            "--cot", "false", "--device", "cpu"]
    result = subprocess.run([sys.executable, "-c", script, *argv], env=environment, capture_output=True, text=True,
                            cwd=tmp_path, timeout=300)
    assert result.returncode != 0
    assert "descore-tests/not-downloaded is neither a local folder nor complete in the hub cache" in result.stderr
    assert "offline mode is on (HF_HUB_OFFLINE=1)" in result.stderr
    expected = no_cot_rewards(checkpoint, clips)
    assert [json.loads(line)["reward"] for line in output.read_text().splitlines()] == expected.tolist()


def test_a_cached_repository_without_config_json_loads_offline(tiny_zoo, clips, offline_cache):
    """VideoReward's repository has model_config.json and checkpoint-N/, no config.json: the offline check
    finds it in the cache all the same, and it scores by hub id exactly like the folder."""
    folder = tiny_zoo["videoreward"]["path"]
    add_to_hub_cache(Path(folder), offline_cache, "descore-tests/tiny-videoreward", FIRST_COMMIT)
    by_folder = reward.build_reward({"name": "videoreward", "path": folder}).score(clips, PROMPTS).rewards
    by_id = reward.build_reward({"name": "videoreward", "path": "descore-tests/tiny-videoreward"}).score(clips, PROMPTS)
    assert torch.isfinite(by_folder).all() and torch.equal(by_id.rewards, by_folder)
    with pytest.raises(ConfigError, match="descore-tests/tiny-videoreward is neither a local folder nor in the hub cache"):
        reward.build_reward({"name": "videoreward", "path": "descore-tests/tiny-videoreward", "revision": "v2"})
