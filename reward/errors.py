"""Typed errors of the reward package; every message names the culprit (file, row, key or value)."""

from __future__ import annotations


class VideoDecodeError(ValueError):
    """A video could not be turned into frames: missing, unreadable, corrupt, empty or malformed."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"cannot read video {source}: {reason}")
        self.source = source
        self.reason = reason


class DataError(ValueError):
    """A preference-data file is malformed; the message lists the offending lines."""


class CheckpointError(ValueError):
    """A reward checkpoint directory is incomplete or does not match the model it is loaded into."""


class ConfigError(ValueError):
    """A job configuration is invalid; the message names the key and the fix."""


class NumericalFaultError(RuntimeError):
    """A training run skipped too many steps in a row (invalid rewards, non-finite loss or gradients)."""


class RemoteRewardError(RuntimeError):
    """Every try to score on the reward servers failed (unreachable, timed out, busy, failing, or answering
    outside the protocol); the message names the servers and the last error."""
