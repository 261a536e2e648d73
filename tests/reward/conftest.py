"""Fixtures of the reward tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="package")
def checkpoint(tiny_descore_dir) -> Path:
    """The session's tiny DeScore checkpoint (``tests/conftest.py``). Tests copy it before changing it."""
    return tiny_descore_dir
