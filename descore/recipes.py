"""The recipes shipped with the kit: ``--config tiny_grpo`` names one of them.

A wheel installs the repository's ``configs/`` folder as ``descore/configs``; a source checkout (or an
editable install) reads ``configs/`` beside this package. Only job recipes (``reward/``, ``generator/``, ``bench/``)
resolve as ``--config`` names; the ``accelerate/`` files are for ``accelerate launch --config_file PATH``
and ``descore recipes`` prints their paths. Nothing here imports torch, so the lookup costs nothing on the
command line.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
JOB_FOLDERS = ("reward", "generator", "bench")
LAUNCH_FOLDERS = ("accelerate",)


def recipe_dir() -> Path:
    """The folder holding the shipped recipes (``reward/``, ``generator/``, ``accelerate/``)."""
    for candidate in (_PACKAGE / "configs", _PACKAGE.parent / "configs"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"the shipped recipes are missing: neither {_PACKAGE / 'configs'} nor {_PACKAGE.parent / 'configs'} exists; reinstall descore-kit")


def recipe_files(folders: tuple[str, ...] = JOB_FOLDERS) -> dict[str, Path]:
    """The shipped YAML files of ``folders`` by bare name (``tiny_grpo``)."""
    root = recipe_dir()
    return {path.stem: path for folder in folders for path in sorted((root / folder).rglob("*.yaml"))}


def shipped_recipes() -> dict[str, Path]:
    """Every job recipe by bare name (``tiny_grpo``), and by its path under the recipe folder
    (``generator/tiny_grpo``), with or without ``.yaml``."""
    root = recipe_dir()
    recipes: dict[str, Path] = {}
    for path in recipe_files().values():
        relative = path.relative_to(root).with_suffix("").as_posix()
        for name in (path.stem, relative, f"{path.stem}.yaml", f"{relative}.yaml"):
            recipes[name] = path
    return recipes


def resolve_recipe(name: str | Path) -> Path:
    """An existing file is used as given; otherwise a bare name resolves to the shipped job recipe."""
    if Path(name).is_file():
        return Path(name)
    recipes = shipped_recipes()
    if str(name) in recipes:
        return recipes[str(name)]
    raise FileNotFoundError(f"--config {name}: no such file, and no shipped recipe of that name "
                            f"(shipped: {', '.join(recipe_files())}; `descore recipes` lists them with their paths)")
