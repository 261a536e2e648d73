"""JSON has no NaN: failed values are written as null, at any depth."""

import math

import numpy as np
import torch

from reward.json_values import finite_or_none, json_safe


def test_finite_numbers_pass_and_the_rest_become_none():
    assert finite_or_none(1.5) == 1.5 and finite_or_none(torch.tensor(2.0)) == 2.0 and finite_or_none(np.float32(3)) == 3.0
    assert [finite_or_none(value) for value in (None, math.nan, math.inf, -math.inf, torch.tensor(math.nan))] == [None] * 5


def test_json_safe_replaces_non_finite_floats_at_any_depth_and_keeps_the_rest():
    value = {"a": math.nan, "b": [1.0, math.inf, {"c": -math.inf, "d": "text"}], "e": (2, None, True)}
    assert json_safe(value) == {"a": None, "b": [1.0, None, {"c": None, "d": "text"}], "e": [2, None, True]}
