"""The README's two fresh-machine commands are exactly what CI runs."""

from __future__ import annotations

import re

from .reward.helpers import REPO_ROOT


def test_ci_runs_the_readme_commands():
    readme = (REPO_ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", readme, re.DOTALL).group(1).strip().splitlines()
    assert len(block) == 2, "the README opens with exactly two commands"
    ci_lines = (REPO_ROOT / ".ci" / "run").read_text().splitlines()
    for command in block:
        assert command in ci_lines, f"CI does not run the README command {command!r}"
