"""The DeScore kit's command line (``descore``) and its shipped recipes; the kit itself lives in ``reward``,
``generator_rl`` and ``benchmarks``."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("descore-kit")
except PackageNotFoundError:  # a source checkout that was never installed
    __version__ = "0+unknown"
