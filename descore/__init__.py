"""The DeScore kit's command line (``descore``) and its shipped recipes; the kit itself lives in ``reward``,
``generator_rl`` and ``benchmarks``."""

from __future__ import annotations


def __getattr__(name: str) -> str:
    """``descore.__version__``, read from the installed distribution on first use: importing
    ``importlib.metadata`` and scanning the installed packages costs more than the rest of ``descore --help``."""
    if name != "__version__":
        raise AttributeError(f"module 'descore' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("descore-kit")
    except PackageNotFoundError:  # a source checkout that was never installed
        return "0+unknown"
