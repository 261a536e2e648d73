"""Progress of a generator run on the terminal: the run's step bar (steps done, rate, ETA) and, under it, where
the current step is — ``sampling 2/8`` (rollout batches done), ``scoring 2/8`` (the reward of batch 2),
``update 5/16`` (micro-steps of the optimizer step) — with that phase's elapsed time and ETA. A real-size
GRPO step runs for minutes, so the phase line is what shows a run is alive and how long the step has left.

tqdm draws the bars on the main process only, when the stream is a terminal (a log file gets none), and
never with ``disable_tqdm``. Switched off, every call does nothing, so trainers call it unconditionally.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from tqdm.auto import tqdm

# "sampling 2/8 [00:41<02:03]": one line whose label and counters a test can read back.
PHASE_FORMAT = "{desc} {n_fmt}/{total_fmt} [{elapsed}<{remaining}]"


class RunProgress:
    """The step bar of a run and the phase line of its current step."""

    def __init__(self, *, desc: str, total: int, initial: int = 0, enabled: bool, stream: TextIO | None = None) -> None:
        stream = sys.stderr if stream is None else stream
        self._steps = tqdm(total=total, initial=initial, desc=desc, unit="step", disable=not enabled, file=stream,
                           dynamic_ncols=True)
        # A phase advances every few seconds to minutes: draw every change (no rate limit), and clear the line
        # when the run ends.
        self._phase = tqdm(total=0, desc="starting", disable=not enabled, file=stream, position=1, leave=False,
                           mininterval=0, miniters=1, bar_format=PHASE_FORMAT, dynamic_ncols=True)

    @classmethod
    def for_run(cls, *, desc: str, total: int, initial: int, is_main_process: bool, disable_tqdm: bool,
                stream: TextIO | None = None) -> RunProgress:
        """Bars on the main process when ``stream`` (default: stderr) is a terminal and ``disable_tqdm`` is off."""
        stream = sys.stderr if stream is None else stream
        enabled = is_main_process and not disable_tqdm and stream.isatty()
        return cls(desc=desc, total=total, initial=initial, enabled=enabled, stream=stream)

    @classmethod
    def off(cls) -> RunProgress:
        """Draws nothing: for callers outside a training loop (the doctor's evaluation rollouts)."""
        return cls(desc="", total=0, enabled=False)

    def start(self, phase: str, total: int) -> None:
        """A phase of the current step begins: its counter restarts at 0 of ``total``."""
        self._phase.set_description_str(phase, refresh=False)
        self._phase.reset(total=total)

    def label(self, phase: str) -> None:
        """Rename the running phase, counter unchanged (``scoring`` between two ``sampling`` batches)."""
        self._phase.set_description_str(phase)

    def advance(self) -> None:
        self._phase.update(1)

    def step_done(self, **postfix: Any) -> None:
        """One step of the run finished; ``postfix`` (e.g. reward=...) is shown beside the step bar."""
        if postfix:
            self._steps.set_postfix(postfix, refresh=False)
        self._steps.update(1)

    def close(self) -> None:
        self._phase.close()
        self._steps.close()

    def __enter__(self) -> RunProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
