"""Checkpoints of generator runs are safe to resume and to share: the run state and the EMA are JSON and
safetensors we read ourselves (a pickle planted in a checkpoint is never unpickled), the EMA is float32, the
final export replaces final/ whole or not at all, and files get the user's normal permissions."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest
import torch
from diffusers.training_utils import EMAModel
from safetensors import safe_open
from safetensors.torch import save_file

import generator_rl.checkpoint as checkpoint_module
from generator_rl.checkpoint import (
    EMA_STATE, EMA_WEIGHTS, LORA_WEIGHTS, RUN_STATE, RunState, checkpoints, export_final, latest_checkpoint, load_ema,
    load_run_state, lora_fingerprint, rotate_checkpoints, save_ema, save_run_state,
)
from generator_rl.config import PolicyConfig
from generator_rl.grpo import GrpoConfig, run_grpo
from reward.errors import CheckpointError

from ..planted import Planted
from .helpers import REPO_ROOT, same_lora, tiny_arguments
from .test_policy import tiny_policy_arguments


@pytest.fixture
def bf16_policy(tiny_wan_dir):
    arguments = tiny_policy_arguments(tiny_wan_dir)
    return PolicyConfig(**{**arguments.__dict__, "transformer_dtype": "bfloat16"}).load_policy(torch.device("cpu"))


def test_a_planted_pickle_is_not_executed_on_resume(tiny_wan_dir, prompt_file, tmp_path):
    """A custom_checkpoint_0.pkl (what accelerate's pickled custom state was) planted in the checkpoint stops
    the resume unread; a pickle planted as accelerate's RNG state is refused by weights_only=True, and the
    run (whose randomness comes from seeded generators) resumes to the uninterrupted result. The files a run
    writes have the permissions the umask gives (safetensors alone would leave 0600)."""
    settings = {"max_steps": 2, "save_steps": 1, "ema_decay": 0.5}
    run_grpo(*tiny_arguments("tiny_grpo", GrpoConfig, tiny_wan_dir, prompt_file, tmp_path / "straight", **settings))
    previous = os.umask(0o022)
    try:
        run_grpo(*tiny_arguments("tiny_grpo", GrpoConfig, tiny_wan_dir, prompt_file, tmp_path / "run",
                                 **{**settings, "max_steps": 1}))
    finally:
        os.umask(previous)
    written = [tmp_path / "run" / "run_config.json", tmp_path / "run" / "final"]
    written += [path for folder in ("final", "checkpoints") for path in (tmp_path / "run" / folder).rglob("*")]
    wrong = {str(path): oct(stat.S_IMODE(path.stat().st_mode)) for path in written
             if stat.S_IMODE(path.stat().st_mode) != (0o755 if path.is_dir() else 0o644)}
    assert not wrong
    checkpoint = tmp_path / "run" / "checkpoints" / "step_1"
    assert {RUN_STATE, EMA_WEIGHTS, EMA_STATE, LORA_WEIGHTS} <= {path.name for path in checkpoint.iterdir()}
    assert not list(checkpoint.glob("custom_checkpoint_*"))
    assert json.loads((checkpoint / RUN_STATE).read_text())["step"] == 1
    marker = tmp_path / "executed"
    torch.save(Planted(marker), checkpoint / "custom_checkpoint_0.pkl")
    torch.load(checkpoint / "custom_checkpoint_0.pkl", weights_only=False)  # what accelerate's custom state did
    assert marker.exists()
    marker.unlink()
    with pytest.raises(CheckpointError, match=r"step_1 holds custom_checkpoint_0\.pkl: pickled state"):
        run_grpo(*tiny_arguments("tiny_grpo", GrpoConfig, tiny_wan_dir, prompt_file, tmp_path / "run", **settings))
    assert not marker.exists()
    (checkpoint / "custom_checkpoint_0.pkl").unlink()
    torch.save(Planted(marker), checkpoint / "random_states_0.pkl")  # accelerate reads it with weights_only=True
    run_grpo(*tiny_arguments("tiny_grpo", GrpoConfig, tiny_wan_dir, prompt_file, tmp_path / "run", **settings))
    assert not marker.exists()
    assert same_lora(tmp_path / "straight", tmp_path / "run")


def test_ema_round_trip_is_float32_and_exact(bf16_policy, tmp_path):
    named = bf16_policy.named_trainable_parameters()
    ema = EMAModel(list(named.values()), decay=0.9)
    assert all(shadow.dtype == torch.float32 for shadow in ema.shadow_params)
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        with torch.no_grad():
            for parameter in named.values():
                parameter.add_(1e-5 * torch.randn(parameter.shape, generator=generator))
        ema.step(list(named.values()))
    save_ema(ema, named, tmp_path)
    restored = EMAModel(list(named.values()), decay=0.9)
    load_ema(restored, named, tmp_path)
    assert restored.optimization_step == 3 and restored.decay == 0.9
    assert all(a.dtype == torch.float32 and torch.equal(a, b) for a, b in zip(restored.shadow_params, ema.shadow_params))
    first = next(iter(named))
    smaller = {name: parameter for name, parameter in named.items() if name != first}
    with pytest.raises(CheckpointError, match=rf"unexpected keys \['{first}'\]"):
        load_ema(EMAModel(list(smaller.values())), smaller, tmp_path)


def test_run_state_is_json_and_a_missing_file_is_named(tmp_path):
    state = RunState()
    state.step = 7
    save_run_state(state, tmp_path)
    restored = RunState()
    load_run_state(restored, tmp_path)
    assert restored.step == 7 and json.loads((tmp_path / RUN_STATE).read_text())["step"] == 7
    with pytest.raises(CheckpointError, match=r"run_state\.json is missing"):
        load_run_state(RunState(), tmp_path / "elsewhere")


def test_a_killed_export_leaves_the_previous_final_or_none(bf16_policy, tmp_path, monkeypatch):
    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed during export")

    config = {"run": {"seed": 0}}
    monkeypatch.setattr(checkpoint_module, "write_run_config", killed)
    with pytest.raises(KeyboardInterrupt):
        export_final(bf16_policy, tmp_path, fused=False, job="tune-test", config=config)
    assert sorted(path.name for path in tmp_path.iterdir()) == []  # no final/, no staging left behind
    monkeypatch.undo()
    final = export_final(bf16_policy, tmp_path, fused=False, job="tune-test", config=config)
    exported = {path.name: path.read_bytes() for path in final.iterdir()}
    assert set(exported) == {LORA_WEIGHTS, "run_config.json"}
    with torch.no_grad():
        for parameter in bf16_policy.trainable_parameters():
            parameter.add_(1.0)
    monkeypatch.setattr(checkpoint_module, "write_run_config", killed)
    with pytest.raises(KeyboardInterrupt):
        export_final(bf16_policy, tmp_path, fused=False, job="tune-test", config=config)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["final"]
    assert {path.name: path.read_bytes() for path in final.iterdir()} == exported


def _checkpoint_folders(run_dir, *names: str) -> None:
    for name in names:
        (run_dir / "checkpoints" / name).mkdir(parents=True)
        (run_dir / "checkpoints" / name / "run.json").write_text("{}")


def test_rotation_keeps_the_newest_by_step_and_touches_nothing_else(tmp_path):
    """Steps compare as numbers (step_10 is newer than step_3); a staging folder, a folder of the user's, a file
    and another run's folder stay; a half-deleted leftover of a killed rotation goes."""
    _checkpoint_folders(tmp_path, "step_1", "step_2", "step_3", "step_10", ".step_11.staging", "mine", "step_x",
                        ".step_0.deleting")
    (tmp_path / "checkpoints" / "notes.txt").write_text("keep me")
    assert rotate_checkpoints(tmp_path, keep=2) == ["step_1", "step_2"]
    assert sorted(path.name for path in (tmp_path / "checkpoints").iterdir()) == [
        ".step_11.staging", "mine", "notes.txt", "step_10", "step_3", "step_x"]
    assert rotate_checkpoints(tmp_path, keep=2) == []
    assert rotate_checkpoints(tmp_path, keep=1) == ["step_3"] and latest_checkpoint(tmp_path).name == "step_10"
    with pytest.raises(ValueError, match="keep must be >= 1"):
        rotate_checkpoints(tmp_path, keep=0)


def test_a_rotation_killed_mid_delete_never_leaves_a_checkpoint_resume_could_pick(tmp_path, monkeypatch):
    """Killed while deleting step_1: it was renamed out of the step_N pattern first, so resuming sees step_2 and
    step_3 only; the next rotation removes the leftover."""
    _checkpoint_folders(tmp_path, "step_1", "step_2", "step_3")

    def killed(path, *args, **kwargs):
        raise KeyboardInterrupt(f"killed while deleting {path}")

    monkeypatch.setattr(checkpoint_module.shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        rotate_checkpoints(tmp_path, keep=2)
    monkeypatch.undo()
    assert [path.name for path in checkpoints(tmp_path)] == ["step_2", "step_3"]
    assert (tmp_path / "checkpoints" / ".step_1.deleting").is_dir()
    assert rotate_checkpoints(tmp_path, keep=2) == []
    assert sorted(path.name for path in (tmp_path / "checkpoints").iterdir()) == ["step_2", "step_3"]


def test_a_run_with_save_total_limit_keeps_its_newest_checkpoints(tiny_wan_dir, prompt_file, tmp_path):
    settings = {"max_steps": 3, "save_steps": 1, "save_total_limit": 2, "group_size": 2, "prompts_per_step": 1,
                "rollout_batch_size": 2, "train_batch_size": 2}
    run_grpo(*tiny_arguments("tiny_grpo", GrpoConfig, tiny_wan_dir, prompt_file, tmp_path / "run", **settings))
    assert sorted(path.name for path in (tmp_path / "run" / "checkpoints").iterdir()) == ["step_2", "step_3"]


SAVE_LORA = """
import sys, torch
from generator_rl.checkpoint import save_lora
from tests.generator_rl.test_policy import tiny_policy_arguments
torch.manual_seed(0)
save_lora(tiny_policy_arguments(sys.argv[1]).load_policy(torch.device("cpu")), sys.argv[2])
"""


@pytest.mark.slow  # two processes: about 20 s on 2 cores
def test_the_same_lora_is_the_same_file_in_every_process(tiny_wan_dir, tmp_path):
    """peft keeps target_modules as a set, iterated in an order that follows each process's string hashing; the
    LoRA file's metadata lists them sorted, so two processes (different PYTHONHASHSEED) write the same LoRA —
    otherwise a resumed run re-exporting its final LoRA would change its fingerprint."""
    fingerprints = []
    for hash_seed in ("1", "2"):
        target = tmp_path / f"lora-{hash_seed}"
        environment = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(REPO_ROOT)}
        finished = subprocess.run([sys.executable, "-c", SAVE_LORA, str(tiny_wan_dir), str(target)], env=environment,
                                  capture_output=True, text=True, timeout=300)
        assert finished.returncode == 0, finished.stderr[-3000:]
        fingerprints.append(lora_fingerprint(target / LORA_WEIGHTS))
    metadata = json.loads(safe_open(tmp_path / "lora-1" / LORA_WEIGHTS, "pt").metadata()["lora_adapter_metadata"])
    assert metadata["transformer.target_modules"] == sorted(metadata["transformer.target_modules"])
    assert fingerprints[0] == fingerprints[1]


def test_the_lora_fingerprint_follows_content_not_header_order(tmp_path):
    """safetensors writes the header's metadata keys in an order that changes from save to save: the
    fingerprint ignores it, and still changes with any tensor value, name or metadata value."""
    tensors = {"b.lora_A.weight": torch.arange(6.0).reshape(2, 3), "a.lora_B.weight": torch.ones(3, 2)}
    metadata = {"format": "pt", "lora_adapter_metadata": '{"r": 2}', "third": "x"}
    first = tmp_path / "first.safetensors"
    save_file(tensors, first, metadata=metadata)
    for attempt in range(40):  # until the header comes out in another order (each try: 5 in 6 chance)
        again = tmp_path / f"again-{attempt}.safetensors"
        save_file(tensors, again, metadata=metadata)
        if again.read_bytes() != first.read_bytes():
            break
    assert again.read_bytes() != first.read_bytes() and lora_fingerprint(again) == lora_fingerprint(first)
    changed = {**tensors, "a.lora_B.weight": torch.ones(3, 2).index_put_((torch.tensor(0), torch.tensor(0)), torch.tensor(2.0))}
    variants = [(changed, metadata), (tensors, {**metadata, "lora_adapter_metadata": '{"r": 4}'}),
                ({"c.lora_A.weight" if name.startswith("b.") else name: value for name, value in tensors.items()}, metadata)]
    for index, (values, meta) in enumerate(variants):
        save_file(values, tmp_path / f"variant-{index}.safetensors", metadata=meta)
        assert lora_fingerprint(tmp_path / f"variant-{index}.safetensors") != lora_fingerprint(first)
