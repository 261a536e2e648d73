"""Preference accuracy: published parity vectors, the two modes' known differences, and agreement with
independent computations (an exhaustive threshold search, and VideoAlign's bucket loop written out)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.preference_accuracy import (
    accuracy_at_threshold, accuracy_with_ties, accuracy_without_ties, three_way_accuracy,
)

# VideoAlign's calc_accuracy.py self-test: margins are float32 differences of the two score lists.
PARITY_LABELS = [1, -1, 0, 1, -1, 0, 1, -1, 0]
PARITY_A = [0.9, -0.7, 0.1, 0.8, -0.6, 0.2, 0.7, -0.5, 0.3]
PARITY_B = [0.1, -0.8, 0.5, 0.5, -0.3, 0.3, 0.4, -0.4, 0.4]


def parity_margins() -> np.ndarray:
    return np.float32(PARITY_A) - np.float32(PARITY_B)


def bucket_loop(labels, margins) -> float:
    """VideoAlign's algorithm as described (buckets C, D, Th, Tm, Thm; pairs moved one at a time by stable
    |m| order; the no-tie state never scored), written as the loop, independently of the vectorised code."""
    buckets = {"C": 0, "D": 0, "Th": 0, "Tm": 0, "Thm": 0}

    def bucket(h, m, epsilon):
        if abs(m) <= epsilon:
            return "Thm" if h == 0 else "Tm"
        if h == 0:
            return "Th"
        return "C" if h * m > 0 else "D"

    for h, m in zip(labels, margins):
        buckets[bucket(h, m, -1.0)] += 1
    best = -np.inf
    for i in sorted(range(len(labels)), key=lambda index: abs(margins[index])):
        buckets[bucket(labels[i], margins[i], -1.0)] -= 1
        buckets[bucket(labels[i], margins[i], abs(margins[i]))] += 1
        best = max(best, (buckets["C"] + buckets["Thm"]) / len(labels))
    return best


def exhaustive(labels, margins) -> float:
    """The best accuracy over every real threshold: 'never tie' and each distinct |m|."""
    return max(accuracy_at_threshold(labels, margins, epsilon).value
               for epsilon in [-1.0, *sorted({abs(float(m)) for m in margins})])


def test_videoalign_parity_vectors():
    """The repo's own __main__ numbers. m = A − B = [.8, .1, −.4, .3, −.3, −.1, .3, −.1, −.1]; of the six
    decided pairs only pair 1 (h = −1, m = +.1) is wrong: 5/6 without ties. With ties: 6/9 (e.g. ε = 0.1 turns
    pairs 1, 5, 7, 8 into ties: 4 right decided pairs + 2 human ties tied by the model)."""
    margins = parity_margins()
    assert accuracy_without_ties(PARITY_LABELS, margins).value == pytest.approx(5 / 6)
    assert accuracy_with_ties(PARITY_LABELS, margins, "videoalign").value == pytest.approx(6 / 9)
    assert accuracy_with_ties(PARITY_LABELS, margins, "exact").value == pytest.approx(6 / 9)
    zero = accuracy_with_ties([1, -1, 0], [0.0, 0.0, 0.0], "videoalign")
    assert zero.value == pytest.approx(1 / 3) and accuracy_without_ties([1, -1, 0], [0.0, 0.0, 0.0]).value == 0.0
    assert accuracy_with_ties([1, -1, 0], [0.0, 0.0, 0.0], "exact").value == pytest.approx(1 / 3)


@pytest.mark.parametrize(("labels", "margins", "videoalign", "exact", "threshold"), [
    # Flaw 1: the no-tie state (0.5: pair 2 right, pair 1 wrong) is never scored; tying pair 2 first gives 0.
    ([1, 1], [-2.0, 1.0], 0.0, 0.5, None),
    # Flaw 2: with |m| = 1 shared by all, VideoAlign scores the half-way state where only pair 0 (wrong) and
    # pair 1 (a human tie) became ties: 2/3. No threshold does that: never tie → 1/3, ε = 1 → 1/3.
    ([1, 0, 1], [-1.0, -1.0, 1.0], 2 / 3, 1 / 3, None),
])
def test_the_two_modes_differ_exactly_where_videoalign_is_known_to_err(labels, margins, videoalign, exact, threshold):
    assert accuracy_with_ties(labels, margins, "videoalign").value == pytest.approx(videoalign)
    result = accuracy_with_ties(labels, margins, "exact")
    assert result.value == pytest.approx(exact) and result.threshold == threshold


def test_exact_mode_reports_its_threshold_and_protocol():
    """h = [1, 0, -1, 0], m = [2, 0.5, -1, 0.25]: never tie → 2/4; ε = 0.25 → 3/4; ε = 0.5 → 4/4; ε = 1 → 3/4."""
    result = accuracy_with_ties([1, 0, -1, 0], [2.0, 0.5, -1.0, 0.25])
    assert (result.value, result.threshold, result.pairs) == (1.0, 0.5, 4)
    assert result.protocol == "with ties, threshold calibrated on the evaluated pairs (exact)"
    assert accuracy_at_threshold([1, 0, -1, 0], [2.0, 0.5, -1.0, 0.25], 0.25).value == 0.75
    strict = accuracy_at_threshold([1, 0, -1, 0], [2.0, 0.5, -1.0, 0.25], 0.25, inclusive=False)  # |m| = 0.25 not a tie
    assert (strict.value, strict.protocol) == (0.5, "with ties at a fixed threshold (tie: |m| < 0.25)")


def random_labels(generator, size: int, kind: str) -> list[int]:
    if kind == "all human ties":
        return [0] * size
    if kind == "no human ties":
        return generator.choice([-1, 1], size).tolist()
    return generator.integers(-1, 2, size).tolist()


def random_margins(generator, size: int, kind: str) -> list[float]:
    if kind == "continuous":
        return generator.normal(size=size).astype(np.float32).tolist()
    if kind == "zero":
        return [0.0] * size
    levels = {"judge 1-5": 5, "judge 0-2": 2}[kind]  # many equal |m|, including m = 0
    return (generator.integers(0, levels + 1, size) - generator.integers(0, levels + 1, size)).astype(float).tolist()


@pytest.mark.parametrize("labels_kind", ["mixed", "all human ties", "no human ties"])
@pytest.mark.parametrize("margins_kind", ["continuous", "judge 1-5", "judge 0-2", "zero"])
def test_both_modes_match_independent_computations_on_random_sets(labels_kind, margins_kind):
    """12 kinds x 300 sets: continuous scores (distinct |m|), discrete judges (many equal |m| and zeros), all
    margins zero; labels mixed, all human ties, or none."""
    generator = np.random.default_rng(len(labels_kind) * 31 + len(margins_kind))
    for _ in range(300):
        size = int(generator.integers(1, 12))
        labels, margins = random_labels(generator, size, labels_kind), random_margins(generator, size, margins_kind)
        assert accuracy_with_ties(labels, margins, "exact").value == pytest.approx(exhaustive(labels, margins))
        assert accuracy_with_ties(labels, margins, "videoalign").value == pytest.approx(bucket_loop(labels, margins))
        assert accuracy_with_ties(labels, margins, "videoalign").value >= accuracy_with_ties(labels, margins, "exact").value - 1 / size - 1e-12


def test_videoalign_mode_depends_on_input_order_and_exact_does_not():
    """The same pairs listed in another order: flaw 2's vector gives 2/3 in one order and 1/3 in the other
    under videoalign (the half-way state it scores is order-made); exact gives 1/3 for both."""
    labels, margins = [1, 0, 1], [-1.0, -1.0, 1.0]
    reordered = [2, 1, 0]
    other_labels, other_margins = [labels[i] for i in reordered], [margins[i] for i in reordered]
    assert accuracy_with_ties(labels, margins, "videoalign").value == pytest.approx(2 / 3)
    assert accuracy_with_ties(other_labels, other_margins, "videoalign").value == pytest.approx(1 / 3)
    assert accuracy_with_ties(labels, margins).value == accuracy_with_ties(other_labels, other_margins).value == pytest.approx(1 / 3)


def test_three_way_accuracy_counts_direct_answers():
    result = three_way_accuracy([1, -1, 0, 1], [1, 0, 0, -1])
    assert (result.value, result.pairs) == (0.5, 4)


@pytest.mark.parametrize(("call", "message"), [
    (lambda: accuracy_without_ties([1, 2], [0.1, 0.2]), r"labels\[1\] is 2; labels must be"),
    (lambda: accuracy_with_ties([1, -1], [0.1, float("nan")]), r"margins\[1\] is nan: a pair the model failed on"),
    (lambda: accuracy_with_ties([1], [0.1, 0.2]), "must be 1-D and of equal length"),
    (lambda: accuracy_with_ties([], []), "no pairs to score"),
    (lambda: accuracy_without_ties([0, 0], [0.1, 0.2]), "every pair is a human tie"),
    (lambda: accuracy_with_ties([1], [0.1], "oracle"), "mode must be one of exact, videoalign; got 'oracle'"),
    (lambda: three_way_accuracy([1, 0], [1, 0.5]), r"predictions\[1\] is 0.5"),
])
def test_bad_input_is_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()
