"""Fixtures of the generator tests: a tiny real-architecture Wan-2.1 saved once per session, and prompts."""

from __future__ import annotations

from pathlib import Path

import pytest

from generator_rl.tiny_wan import save_tiny_wan

PROMPTS = ["a red square moving left", "a blue ball bouncing", "a dog running on the beach", "bright sunny day"]


@pytest.fixture(scope="session")
def tiny_wan_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_wan(tmp_path_factory.mktemp("tiny-wan"))


@pytest.fixture(scope="session")
def prompt_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return path

