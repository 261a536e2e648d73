"""Progress of generator runs: the phase line reports what a step is doing (sampling i/N rollout batches,
scoring, update j/M micro-steps) under the step bar, on a terminal only, and not with ``disable_tqdm``."""

from __future__ import annotations

import io
import re
import sys

import pytest

from generator_rl.flow_dpo import FlowDpoConfig, run_flow_dpo
from generator_rl.grpo import GrpoConfig, run_grpo
from generator_rl.progress import RunProgress

from .helpers import tiny_arguments

# A phase line is "<label> <n>/<total> [<elapsed><<remaining>]" (progress.PHASE_FORMAT).
PHASE = re.compile(r"([A-Za-z][\w ():]*?) (\d+)/(\d+) \[")


class Terminal(io.StringIO):
    """A captured stream that says it is a terminal, as stderr is in an interactive shell."""

    def isatty(self) -> bool:
        return True


def changes(shown: list[tuple]) -> list[tuple]:
    """Each state once (a bar is redrawn unchanged, e.g. when it closes)."""
    return [state for index, state in enumerate(shown) if index == 0 or state != shown[index - 1]]


def phases(text: str) -> list[tuple[str, int, int]]:
    """The (label, done, total) states the phase line showed."""
    return changes([(label, int(done), int(total)) for label, done, total in PHASE.findall(text)])


def steps(text: str, desc: str) -> list[tuple[int, int]]:
    """The (done, total) states the step bar showed."""
    found = re.findall(rf"{desc}:\s+\d+%\|[^|]*\|\s*(\d+)/(\d+) \[", text)
    return changes([(int(done), int(total)) for done, total in found])


def test_phase_line_reports_labels_and_counters():
    stream = Terminal()
    progress = RunProgress(desc="GRPO", total=3, initial=1, enabled=True, stream=stream)
    progress.start("sampling", total=2)
    progress.advance()
    progress.label("scoring")
    progress.label("sampling")
    progress.advance()
    progress.label("scoring")
    progress.start("update", total=3)
    for _ in range(3):
        progress.advance()
    progress.step_done(reward="0.5000")
    progress.close()
    text = stream.getvalue()
    assert phases(text)[1:] == [
        ("sampling", 0, 2), ("sampling", 1, 2), ("scoring", 1, 2), ("sampling", 1, 2), ("sampling", 2, 2),
        ("scoring", 2, 2), ("update", 0, 3), ("update", 1, 3), ("update", 2, 3), ("update", 3, 3),
    ]
    assert steps(text, "GRPO") == [(1, 3), (2, 3)] and "reward=0.5000" in text  # a resumed run starts at 1


@pytest.mark.parametrize("terminal, main, disabled", [(False, True, False), (True, False, False), (True, True, True)],
                         ids=["not-a-terminal", "not-the-main-process", "disable_tqdm"])
def test_no_bars_off_a_terminal_off_the_main_process_or_when_disabled(terminal, main, disabled):
    stream = Terminal() if terminal else io.StringIO()
    progress = RunProgress.for_run(desc="GRPO", total=2, initial=0, is_main_process=main, disable_tqdm=disabled,
                                   stream=stream)
    progress.start("sampling", total=1)
    progress.advance()
    progress.step_done()
    progress.close()
    assert stream.getvalue() == ""


def test_grpo_step_shows_sampling_scoring_and_update(tiny_wan_dir, prompt_file, tmp_path, monkeypatch):
    """2 prompts x group 4 = 8 videos in rollout batches of 4: sampling/decoding 1/2 and 2/2 (each batch is scored
    in the background while the next samples), then waiting for the last scores; then 2 micro-batches of 4 videos
    x 5 stochastic steps = 10 update micro-steps."""
    stream = Terminal()
    monkeypatch.setattr(sys, "stderr", stream)
    run_grpo(*tiny_arguments("tiny_grpo", GrpoConfig, tiny_wan_dir, prompt_file, tmp_path / "run", max_steps=1,
                             save_steps=1, rollout_batch_size=4))
    text = stream.getvalue()
    shown = [state for state in phases(text) if state[0] != "starting"]
    assert shown == [
        ("sampling", 0, 2), ("sampling", 1, 2), ("decoding", 1, 2), ("sampling", 1, 2), ("sampling", 2, 2),
        ("decoding", 2, 2), ("scoring", 2, 2), *(("update", done, 10) for done in range(11)),
    ]
    assert steps(text, "GRPO") == [(0, 1), (1, 1)]


def test_flow_dpo_shows_pair_building_and_update(tiny_wan_dir, prompt_file, tmp_path, monkeypatch):
    """4 prompts, one pair round: sampling and scoring 1/4 ... 4/4, then 2 accumulated micro-batches per step."""
    stream = Terminal()
    monkeypatch.setattr(sys, "stderr", stream)
    run_flow_dpo(*tiny_arguments("tiny_flow_dpo", FlowDpoConfig, tiny_wan_dir, prompt_file, tmp_path / "run",
                                 max_steps=2, save_steps=2, samples_per_prompt=2, train_batch_size=1,
                                 gradient_accumulation_steps=2))
    shown = [state for state in phases(stream.getvalue()) if state[0] != "starting"]
    pairs = "pairs (round 0)"
    expected = [(f"{pairs}: sampling", 0, 4)]
    for done in range(1, 5):
        expected += [(f"{pairs}: sampling", done, 4), (f"{pairs}: scoring", done, 4)]
        expected += [(f"{pairs}: sampling", done, 4)] if done < 4 else []
    expected += [("update", 0, 2), ("update", 1, 2), ("update", 2, 2)] * 2
    assert shown == expected
    assert steps(stream.getvalue(), "Flow-DPO") == [(0, 2), (1, 2), (2, 2)]
