"""The wheel works on its own: built, installed (not editable) into a fresh virtual environment, and run from an
empty folder, with no source checkout in sight.

The fresh environment gets no dependencies from the network: a ``.pth`` file adds the site-packages of the
interpreter running the tests (where torch and the rest are installed) after the environment's own
site-packages, so the kit itself comes from the wheel and only its dependencies are reused. A ``.pth`` line
that names a folder does not run that folder's own ``.pth`` files, so an editable install of the kit there
stays invisible.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from .conftest import REPO_ROOT


def _run(*command: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"} | {"WANDB_MODE": "offline"}
    return subprocess.run([str(part) for part in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=3600)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(the wheel, the bin folder of a fresh venv with that wheel installed)."""
    root = tmp_path_factory.mktemp("wheel")
    built = _run(sys.executable, "-m", "pip", "wheel", REPO_ROOT, "--no-deps", "--no-build-isolation", "-w", root / "dist", cwd=root)
    assert built.returncode == 0, built.stderr
    (wheel,) = (root / "dist").glob("descore_kit-*.whl")
    created = _run(sys.executable, "-m", "venv", "--without-pip", root / "venv", cwd=root)
    assert created.returncode == 0, created.stderr
    python = root / "venv" / "bin" / "python"
    site = _run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=root).stdout.strip()
    (Path(site) / "reuse_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = _run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", wheel, cwd=root)
    assert pip.returncode == 0, pip.stderr
    return wheel, root / "venv" / "bin"


@pytest.mark.slow
def test_the_wheel_holds_the_code_and_every_recipe(installed):
    wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    recipes = {f"descore/configs/{path.relative_to(REPO_ROOT / 'configs').as_posix()}" for path in (REPO_ROOT / "configs").rglob("*.yaml")}
    assert recipes and recipes <= names
    assert {"descore/cli.py", "descore/__main__.py", "reward/cold_start.py", "generator_rl/grpo.py", "benchmarks/demo.py"} <= names


@pytest.mark.slow
def test_the_installed_command_runs_from_an_empty_folder(installed, tmp_path):
    _, bin_folder = installed
    where = _run(bin_folder / "python", "-c", "import descore, reward; print(descore.__file__); print(reward.__file__)", cwd=tmp_path)
    assert all(line.startswith(str(bin_folder.parent)) for line in where.stdout.splitlines()), where.stdout
    version = _run(bin_folder / "descore", "--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("descore-kit ") and "0+unknown" not in version.stdout
    recipes = _run(bin_folder / "descore", "recipes", cwd=tmp_path)
    assert recipes.returncode == 0 and f"{bin_folder.parent}" in recipes.stdout and "tiny_grpo" in recipes.stdout
    demo_help = _run(bin_folder / "descore", "demo", "--help", cwd=tmp_path)
    assert demo_help.returncode == 0 and "--output_dir" in demo_help.stdout
    assert list(tmp_path.iterdir()) == [], "listing and help write nothing"


@pytest.mark.slow
def test_the_installed_demo_runs_twice_in_one_folder(installed, tmp_path):
    """The second run finds the finished runs of the first and resumes them instead of failing."""
    _, bin_folder = installed
    for attempt in ("first", "second"):
        demo = _run(bin_folder / "descore", "demo", "--output_dir", "demo", cwd=tmp_path)
        assert demo.returncode == 0, f"{attempt} run:\n{demo.stdout}\n{demo.stderr}"
        assert "[reward] held-out pairwise accuracy" in demo.stdout


@pytest.mark.slow
def test_the_installed_metadata_declares_the_vbench_reward_plugin(installed, tmp_path):
    """The entry point in pyproject.toml reaches the installed metadata, and the registry imports it by name."""
    _, bin_folder = installed
    code = ("import sys; from reward.base import check_reward_entry, registered_rewards; "
            "assert 'benchmarks.vbench.reward' not in sys.modules; print('vbench' in registered_rewards()); "
            "check_reward_entry({'name': 'vbench', 'dimension': 'temporal_flickering'}); "
            "print(sys.modules['benchmarks.vbench.reward'].__file__)")
    checked = _run(bin_folder / "python", "-c", code, cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    declared, module = checked.stdout.split()
    assert declared == "True" and module.startswith(str(bin_folder.parent))
