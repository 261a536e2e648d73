"""Pairwise preference accuracy of a reward model against human labels, with and without ties.

Inputs are human labels h_i ∈ {+1 (A preferred), −1 (B preferred), 0 (tie)} and the model's margins
m_i = score(A) − score(B). At a threshold ε the model calls a pair a tie when |m_i| ≤ ε, and a pair counts as
correct when both sides tie, or neither does and h_i·m_i > 0 (an exact m_i = 0 outside a tie is wrong).

- **Without ties** (VideoAlign, arXiv 2501.13918, §5): human-tied pairs are left out and the model never ties:
  accuracy = #(h·m > 0) / #(h ≠ 0).
- **With ties, tie-calibrated** (Deutsch et al., "Ties Matter", arXiv 2305.14324; VideoAlign's
  ``calc_accuracy.py``): the accuracy over *all* pairs at the best ε, chosen on the evaluated set itself —
  an optimistic, protocol-specific number. Its floor is the human tie rate (a huge ε makes every pair a tie).
  Two modes:

  * ``exact`` tries ε over "the model never ties" and every distinct |m|, so all pairs sharing one |m| become
    ties together, and reports the best accuracy and its ε.
  * ``videoalign`` reproduces VideoAlign's published algorithm, quirks included, so our numbers compare with
    papers that used it: pairs turn into ties one at a time in order of |m| (input order among equal |m|),
    the accuracy is scored after each, and the state where the model never ties is never scored. With
    distinct |m| the two modes differ only when no ties at all would be best; with repeated |m| (discrete or
    pairwise judges, bf16-rounded heads) ``videoalign`` can score states no threshold produces and report
    more than ``exact``. See ``docs/preference_accuracy.md``.
- **At a fixed ε** (VideoScore's convention): the accuracy over all pairs at a threshold given in advance.
- **Three-way** for judges that answer A / B / tie directly: the share of pairs whose answer equals the label.

Margins are compared as given: compute them in float32 to match VideoAlign's numbers bit for bit (rounding
a difference to bf16 first creates equal |m| that float32 keeps apart). Every result names its protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np


class TieMode(StrEnum):
    EXACT = "exact"
    VIDEOALIGN = "videoalign"


@dataclass(frozen=True)
class Accuracy:
    """One accuracy figure and how it was obtained. ``threshold`` is the ε at which the model calls a tie
    (None: it never does); for ``videoalign`` it is the |m| of the last pair turned into a tie in the best
    state, which need not be a state any single threshold gives."""

    value: float
    pairs: int
    protocol: str
    threshold: float | None = None


def _checked(labels: Sequence[float] | np.ndarray, values: Sequence[float] | np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Labels as integers in {−1, 0, 1} and ``values`` as a float array of the same length; anything else raises
    a ValueError naming the first offending position."""
    h, v = np.asarray(labels), np.asarray(values, dtype=np.float64)
    if h.ndim != 1 or v.shape != h.shape:
        raise ValueError(f"labels and {what} must be 1-D and of equal length, got shapes {h.shape} and {v.shape}")
    if len(h) == 0:
        raise ValueError("no pairs to score")
    bad = np.flatnonzero(~np.isin(h, (-1, 0, 1)))
    if len(bad):
        raise ValueError(f"labels[{bad[0]}] is {h[bad[0]].item()!r}; labels must be +1 (A preferred), -1 (B preferred) or 0 (tie)")
    bad = np.flatnonzero(~np.isfinite(v))
    if len(bad):
        raise ValueError(f"{what}[{bad[0]}] is {v[bad[0]].item()}: a pair the model failed on must be dropped (and counted) before scoring")
    return h.astype(np.int64), v


def accuracy_without_ties(labels: Sequence[int] | np.ndarray, margins: Sequence[float] | np.ndarray) -> Accuracy:
    """#(h·m > 0) / #(h ≠ 0): human ties are left out, an exact m = 0 is wrong."""
    h, m = _checked(labels, margins, "margins")
    decided = h != 0
    if not decided.any():
        raise ValueError("every pair is a human tie: accuracy without ties is undefined")
    return Accuracy(float(np.mean(h[decided] * m[decided] > 0)), int(decided.sum()), "without ties")


def accuracy_at_threshold(
    labels: Sequence[int] | np.ndarray, margins: Sequence[float] | np.ndarray, threshold: float, *, inclusive: bool = True
) -> Accuracy:
    """Accuracy over all pairs when the model calls a tie for |m| ≤ ``threshold`` (|m| < ``threshold`` with
    ``inclusive=False``, VideoScore's ``get_genaibench_pairwise_acc.py`` convention)."""
    h, m = _checked(labels, margins, "margins")
    model_tie = np.abs(m) <= threshold if inclusive else np.abs(m) < threshold
    correct = np.where(model_tie, h == 0, (h != 0) & (h * m > 0))
    rule = "|m| <=" if inclusive else "|m| <"
    return Accuracy(float(correct.mean()), len(h), f"with ties at a fixed threshold (tie: {rule} {threshold:g})", float(threshold))


def accuracy_with_ties(
    labels: Sequence[int] | np.ndarray, margins: Sequence[float] | np.ndarray, mode: TieMode | str = TieMode.EXACT
) -> Accuracy:
    """Tie-calibrated accuracy over all pairs (module docstring): the best over thresholds, per ``mode``.

    Turning pair i into a model tie changes the number of correct pairs by −1 if it was right without the tie
    (h ≠ 0, h·m > 0), by +1 if it is a human tie, else by 0; so the state after the first k pairs in order of
    |m| has (correct at "never tie" + the first k changes) correct pairs.
    """
    if mode not in tuple(TieMode):
        raise ValueError(f"mode must be one of {', '.join(TieMode)}; got {mode!r}")
    mode = TieMode(mode)
    h, m = _checked(labels, margins, "margins")
    order = np.argsort(np.abs(m), kind="stable")
    magnitude = np.abs(m)[order]
    right_without_tie = (h != 0) & (h * m > 0)
    change = np.where(h == 0, 1, np.where(right_without_tie, -1, 0))[order]
    correct = int(right_without_tie.sum()) + np.concatenate(([0], np.cumsum(change)))  # after 0, 1, ..., n pairs
    if mode is TieMode.VIDEOALIGN:
        states = np.arange(1, len(h) + 1)
    else:
        group_ends = np.flatnonzero(np.append(magnitude[1:] != magnitude[:-1], True)) + 1
        states = np.concatenate(([0], group_ends))
    best = states[np.argmax(correct[states])]  # the first (smallest ε) of equally good states
    threshold = float(magnitude[best - 1]) if best else None
    protocol = f"with ties, threshold calibrated on the evaluated pairs ({mode.value})"
    return Accuracy(float(correct[best] / len(h)), len(h), protocol, threshold)


def three_way_accuracy(labels: Sequence[int] | np.ndarray, predictions: Sequence[int] | np.ndarray) -> Accuracy:
    """Share of pairs whose predicted +1 / −1 / 0 equals the label (judges that answer A, B or tie)."""
    h, predicted = _checked(labels, predictions, "predictions")
    if not np.isin(predicted, (-1, 0, 1)).all():
        index = int(np.flatnonzero(~np.isin(predicted, (-1, 0, 1)))[0])
        raise ValueError(f"predictions[{index}] is {predicted[index].item()}; predictions must be +1, -1 or 0")
    return Accuracy(float(np.mean(predicted == h)), len(h), "three-way (direct A / B / tie answers)")
