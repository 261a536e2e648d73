"""benchmarks/optimizer_kernels.py: the LoRA it steps is the kit's Wan LoRA, and the two kernels agree."""

from __future__ import annotations

import json

import torch

from benchmarks.optimizer_kernels import lora_shapes, main, stepped


def test_the_lora_shapes_are_the_kits_wan_1_3b_lora():
    rank, width, ffn, layers = 32, 1536, 8960, 30
    attention = 2 * 4 * (rank * width + width * rank)  # self + cross attention: q, k, v, out (A and B each)
    feed_forward = 2 * (rank * width + ffn * rank)  # ffn.net.0.proj (width -> ffn) and ffn.net.2 (ffn -> width)
    shapes = lora_shapes("1.3b", rank)
    assert len(shapes) == layers * 2 * (8 + 2)
    assert sum(shape.numel() for shape in shapes) == layers * (attention + feed_forward) == 43_745_280


def test_fused_and_foreach_adamw_agree_up_to_rounding():
    shapes = [torch.Size([32, 96]), torch.Size([96, 32]), torch.Size([7])]
    fused, _ = stepped(shapes, fused=True, steps=5, device=torch.device("cpu"))
    foreach, _ = stepped(shapes, fused=False, steps=5, device=torch.device("cpu"))
    start, _ = stepped(shapes, fused=True, steps=0, device=torch.device("cpu"))
    moved = max(float((a - b).abs().max()) for a, b in zip(fused, start))
    assert moved > 1e-4  # five steps of lr 1e-4 moved the weights
    assert max(float((a - b).abs().max()) for a, b in zip(fused, foreach)) < 1e-8


def test_the_script_reports_both_kernels(tmp_path, capsys):
    assert main(["--steps", "2", "--json_out", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["lora_weights"] == 43_745_280 and report["fused_step_s"] > 0 and report["max_abs_difference"] < 1e-6
    assert "fused AdamW step" in capsys.readouterr().out
