"""Mixed precision of stage 1: with bf16 weights every trained tensor is float32, so an lr-2e-6 step changes
it (in bf16 most of it would round away), and the saved checkpoints keep the change."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from reward.cold_start import run
from reward.modeling import ADAPTER_WEIGHTS, HEAD_NAME, DeScoreModel, LoraSettings, save_descore

from ..conftest import TINY_SPEC
from .helpers import ChangedEntries, tiny_config

# Two optimizer steps of lr 2e-6 (DeScore's lr): peft starts LoRA B at zero, so LoRA A's first gradient is
# exactly zero and the second step is the first that moves every tensor. 2 x 2e-6 is far below half a bf16 ulp
# of a typical weight (~6e-5 at 0.02) and far above float32's (~1e-9).
BF16_STEPS = {
    "torch_dtype": "bfloat16", "bf16": "true", "learning_rate": 2e-6, "lr_scheduler_type": "constant",
    "warmup_steps": 0, "max_steps": 2, "eval_strategy": "no", "save_strategy": "no", "logging_steps": 1,
}
KINDS = ("lora_A", "lora_B", "visual.modules_to_save", "trainable_tokens_delta", "head.weight")


def assert_every_trainable_tensor_changed(record: dict) -> None:
    """>= 90 % of every trainable tensor changed, and every trained kind is there and float32.

    The vision tower's position table is read at 16 of its 256 rows by 64x64 frames (a 4x4 patch grid taken
    from a 16x16 table), so there the share is of the entries that got a gradient.
    """
    assert record["frozen_dtypes"] == ["torch.bfloat16"] and record["global_step"] == 2
    counts = record["counts"]
    assert all(any(kind in name for name in counts) for kind in KINDS), sorted(counts)
    low = {}
    for name, count in counts.items():
        reach = count["touched"] if name.endswith("pos_embed.weight") else count["numel"]
        if count["dtype"] != "torch.float32" or count["touched"] == 0 or count["changed"] < 0.9 * reach:
            low[name] = count
    assert not low, low


def test_two_bf16_steps_change_every_trainable_tensor_and_the_checkpoint_keeps_them(
    tiny_qwen3_vl_dir, visual_pairs, tmp_path
):
    train, _ = visual_pairs
    counter = ChangedEntries()
    run(tiny_config(tiny_qwen3_vl_dir, train, tmp_path / "run", merge_final="false", **BF16_STEPS), callbacks=[counter])
    assert_every_trainable_tensor_changed(json.loads((tmp_path / "run" / "changes-rank0.json").read_text()))

    # The adapter checkpoint holds the float32 values exactly as trained.
    final = tmp_path / "run" / "final"
    adapter, head = load_file(final / ADAPTER_WEIGHTS), load_file(final / HEAD_NAME)
    assert {tensor.dtype for tensor in [*adapter.values(), *head.values()]} == {torch.float32}
    loaded = dict(DeScoreModel.from_pretrained(final, dtype=torch.float32).named_parameters())
    for name, trained in counter.after.items():
        assert torch.equal(loaded[name], trained), name
    # ... and its vision tower differs from the base's (as loaded, in bf16) where training moved it.
    base = dict(DeScoreModel.from_base(str(tiny_qwen3_vl_dir), video_spec=TINY_SPEC, dtype=torch.bfloat16).named_parameters())
    visual = {name: _plain_key(name) for name in counter.after if "visual.modules_to_save" in name}
    for name, key in visual.items():
        reach = counter.touched[name].sum() if name.endswith("pos_embed.weight") else loaded[name].numel()
        assert (loaded[name] != base[f"backbone.{key}"].float()).sum() >= 0.9 * reach, name

    # A merged export is written in the load dtype: each trained weight rounded once to bf16.
    merged = save_descore(DeScoreModel.from_pretrained(final, dtype=torch.bfloat16).merge_lora_(), tmp_path / "merged")
    weights = load_file(merged / "model.safetensors")
    assert {tensor.dtype for tensor in weights.values()} == {torch.bfloat16}
    changed = 0
    for name, key in visual.items():
        assert torch.equal(weights[key], counter.after[name].to(torch.bfloat16)), key
        changed += int((weights[key] != base[f"backbone.{key}"]).sum())
    assert changed > 0


def _plain_key(peft_name: str) -> str:
    """``backbone.base_model.model.model.visual.modules_to_save.default.X`` -> ``model.visual.X``."""
    return peft_name.removeprefix("backbone.base_model.model.").replace(".modules_to_save.default", "")


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_trainable_parameters_are_float32_whatever_the_load_dtype(tiny_qwen3_vl_dir, dtype):
    model = DeScoreModel.from_base(str(tiny_qwen3_vl_dir), video_spec=TINY_SPEC, lora=LoraSettings(r=4, alpha=8), dtype=dtype)
    trainable = {p.dtype for p in model.parameters() if p.requires_grad}
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    assert trainable == {torch.float32} and frozen == {getattr(torch, dtype)}
