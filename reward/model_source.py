"""``tiny:<name>`` sources: tiny random-weight models (and the tiny prompt file), built once into a cache.

The tiny recipes name their model as ``tiny:wan`` or ``tiny:qwen3-vl`` instead of a folder that only the demo
creates, so they run from any working folder. A config resolves such a source with :func:`resolve_tiny` to a
cached folder and from then on it is an ordinary local checkpoint, loaded by the same ``from_pretrained`` code
as real weights; the run record holds that folder.

The cache is ``$DESCORE_CACHE/tiny`` (default ``$XDG_CACHE_HOME/descore/tiny``, i.e. ``~/.cache/descore/tiny``).
A build lands in ``<name>-<fingerprint>``: the fingerprint hashes the source files that define the build and
the versions of the libraries whose initialisers and tokenizer trainers produce the weights, so editing the
builder or upgrading a library gives a new folder (a run recorded against the old one then reports the
changed model instead of resuming on other weights). A build is written into a temporary sibling folder and
renamed into place, so a folder that exists is complete, and processes racing to build the same entry (the
ranks of ``accelerate launch``) keep one result and never see a half-written one.

Each side of the kit owns its table of builds (``reward.tiny_models.TINY_VLMS``,
``generator_rl.tiny_wan.TINY_WAN``), so an option accepts only the tiny sources it can load.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .errors import ConfigError

PREFIX = "tiny:"


@dataclass(frozen=True)
class TinyBuild:
    """How one tiny entry is made.

    ``build`` writes the entry into the folder it is given; ``recipe`` is what defines what it writes (source
    files, hashed by content, or literal text); ``libraries`` the packages whose versions change it; ``entry``
    names the file inside the folder that the source stands for (empty: the folder itself).
    """

    build: Callable[[Path], object]
    recipe: tuple[Path | str, ...]
    libraries: tuple[str, ...] = ()
    entry: str = ""


def is_tiny(source: str | Path) -> bool:
    return str(source).startswith(PREFIX)


def cache_root() -> Path:
    """Where tiny builds are kept. Read from the environment like ``HF_HOME``: it is a machine setting, not
    a run setting (the run records the resolved folder)."""
    if os.environ.get("DESCORE_CACHE"):
        root = Path(os.environ["DESCORE_CACHE"]).expanduser()
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "descore"
    return root.absolute() / "tiny"  # absolute: the run record holds the resolved folder


def fingerprint(build: TinyBuild) -> str:
    """12 hex digits of sha256 over the recipe (file bytes or text) and ``library==version`` of each library."""
    digest = hashlib.sha256()
    for part in build.recipe:
        digest.update((part.read_bytes() if isinstance(part, Path) else part.encode()) + b"\0")
    for library in build.libraries:
        try:
            installed = version(library)
        except PackageNotFoundError:
            installed = "absent"
        digest.update(f"{library}=={installed}\0".encode())
    return digest.hexdigest()[:12]


def resolve_tiny(source: str | Path, builds: Mapping[str, TinyBuild], *, what: str, cache: Path | None = None) -> str:
    """``tiny:<name>`` as the path of its cached build (built now if missing); any other source unchanged.

    ``builds`` are the tiny entries the option ``what`` accepts; another ``tiny:`` name raises a
    :class:`ConfigError` that lists them.
    """
    text = str(source)
    if not is_tiny(text):
        return text
    name = text[len(PREFIX):]
    if name not in builds:
        known = ", ".join(PREFIX + key for key in builds)
        raise ConfigError(f"{what}: unknown tiny source {text!r}; {what} accepts {known}")
    build = builds[name]
    folder = build_once((cache or cache_root()) / f"{name}-{fingerprint(build)}", build.build)
    return str(folder / build.entry) if build.entry else str(folder)


def build_once(folder: Path, build: Callable[[Path], object]) -> Path:
    """``folder``, written by ``build`` unless it already exists; atomic (build beside it, then rename)."""
    if folder.is_dir():
        return folder
    staging = folder.parent / f".{folder.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)  # (not mkdtemp: its 0700 mode would make a shared cache private)
    try:
        build(staging)
        os.rename(staging, folder)
    except OSError:
        if not folder.is_dir():  # not a lost race: a real failure
            raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return folder
