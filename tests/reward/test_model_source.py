"""``tiny:`` sources: resolved to a cached folder built once, atomically, named by the fingerprint of its recipe."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import multiprocessing.synchronize
from importlib.metadata import version
from pathlib import Path

import pytest

from reward.errors import ConfigError
from reward.model_source import TinyBuild, build_once, cache_root, fingerprint, resolve_tiny
from reward.run_record import check_model_source
from reward.tiny_models import resolve_backbone


def _write_numbers(folder: Path) -> None:
    for index in range(20):
        (folder / f"part{index:02d}.json").write_text(json.dumps(list(range(index * 1000))))


def test_a_tiny_source_is_built_once_into_a_folder_named_by_its_fingerprint(tmp_path):
    calls = []
    build = TinyBuild(lambda folder: calls.append(folder) or (folder / "weights.txt").write_text("w"), ("recipe v1",))
    first = resolve_tiny("tiny:toy", {"toy": build}, what="model", cache=tmp_path)
    again = resolve_tiny("tiny:toy", {"toy": build}, what="model", cache=tmp_path)
    digest = hashlib.sha256(b"recipe v1\0").hexdigest()[:12]
    expected = tmp_path / f"toy-{digest}"
    assert first == again == str(expected) and (expected / "weights.txt").read_text() == "w"
    assert len(calls) == 1 and sorted(path.name for path in tmp_path.iterdir()) == [expected.name]


def test_other_sources_pass_through_and_an_entry_names_a_file(tmp_path):
    build = TinyBuild(lambda folder: (folder / "prompts.txt").write_text("a\n"), ("p",), entry="prompts.txt")
    assert resolve_tiny("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", {"p": build}, what="model", cache=tmp_path) == (
        "Wan-AI/Wan2.1-T2V-1.3B-Diffusers")
    resolved = Path(resolve_tiny("tiny:p", {"p": build}, what="prompts", cache=tmp_path))
    assert resolved.name == "prompts.txt" and resolved.read_text() == "a\n"


def test_the_fingerprint_follows_recipe_files_and_library_versions(tmp_path):
    recipe = tmp_path / "builder.py"
    recipe.write_text("SIZE = 1\n")
    plain = TinyBuild(_write_numbers, (recipe,))
    with_torch = TinyBuild(_write_numbers, (recipe,), ("torch",))
    expected = hashlib.sha256(b"SIZE = 1\n\0" + f"torch=={version('torch')}\0".encode()).hexdigest()[:12]
    assert fingerprint(with_torch) == expected and fingerprint(plain) != expected
    before = fingerprint(plain)
    recipe.write_text("SIZE = 2\n")
    assert fingerprint(plain) != before


def test_the_cache_is_descore_cache_else_the_xdg_cache(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DESCORE_CACHE", "relative")
    assert cache_root() == tmp_path / "relative" / "tiny"
    monkeypatch.delenv("DESCORE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "descore" / "tiny"


def test_an_unknown_tiny_name_lists_what_the_option_accepts(tmp_path):
    with pytest.raises(ConfigError, match=r"^model_name_or_path: unknown tiny source 'tiny:wan'; "
                                          r"model_name_or_path accepts tiny:qwen3-vl, tiny:qwen2.5-vl$"):
        resolve_backbone("tiny:wan")


def test_losing_a_build_race_keeps_the_winner_and_leaves_no_staging(tmp_path):
    folder = tmp_path / "toy-abc"

    def build_while_another_process_finishes(staging: Path) -> None:
        (staging / "mine.txt").write_text("loser")
        folder.mkdir()
        (folder / "theirs.txt").write_text("winner")

    assert build_once(folder, build_while_another_process_finishes) == folder
    assert [path.name for path in folder.iterdir()] == ["theirs.txt"] and [p.name for p in tmp_path.iterdir()] == [folder.name]


def test_a_failed_build_leaves_nothing(tmp_path):
    def broken(staging: Path) -> None:
        (staging / "half.txt").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        build_once(tmp_path / "toy-abc", broken)
    assert list(tmp_path.iterdir()) == []


def _race(folder: Path, start: multiprocessing.synchronize.Barrier) -> None:
    start.wait()
    build_once(folder, _write_numbers)


def test_processes_racing_to_build_share_one_complete_folder(tmp_path):
    folder = tmp_path / "cache" / "toy-abc"
    context = multiprocessing.get_context("fork")  # forked: no re-import of the test's libraries per process
    start = context.Barrier(3)
    processes = [context.Process(target=_race, args=(folder, start)) for _ in range(3)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    assert [process.exitcode for process in processes] == [0, 0, 0]
    assert [path.name for path in folder.parent.iterdir()] == [folder.name]
    assert sorted(path.name for path in folder.iterdir()) == [f"part{index:02d}.json" for index in range(20)]
    assert json.loads((folder / "part19.json").read_text()) == list(range(19_000))


def test_a_tiny_backbone_resolves_to_a_loadable_checkpoint(tiny_source_cache):
    from transformers import AutoConfig

    folder = Path(resolve_backbone("tiny:qwen3-vl"))
    assert folder.parent == tiny_source_cache / "tiny" and folder.name.startswith("qwen3-vl-")
    assert AutoConfig.from_pretrained(folder).model_type == "qwen3_vl"


def test_a_reward_path_given_a_tiny_source_says_which_command_trains_one():
    with pytest.raises(ConfigError, match=r"reward model 'descore' path: tiny:qwen3-vl is a tiny base model, .*"
                                          r"`descore demo --output_dir runs/demo`"):
        check_model_source("tiny:qwen3-vl", what="reward model 'descore' path")
