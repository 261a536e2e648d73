"""AdamW kernels on the LoRA of a Wan transformer: PyTorch's fused kernel against the foreach kernel.

The LoRA tensors are the ones ``generator_rl`` trains: the Wan-2.1 transformer (``--model 1.3b``: 30 layers,
width 1536, FFN 8960; ``14b``: 40 layers, width 5120, FFN 13824) is built on the meta device, the kit's
``LoraSpec`` (rank 32 on self/cross attention and the FFN) is injected, and float32 tensors of exactly the
LoRA shapes are stepped with random gradients. Reported: the median seconds of one ``optimizer.step()`` per
kernel and the largest absolute difference between the two kernels' weights after ``--steps`` steps from the
same start with the same gradients (their updates agree up to float rounding)::

    python -m benchmarks.optimizer_kernels                       # CPU, 1.3B LoRA
    python -m benchmarks.optimizer_kernels --device cuda --model 14b
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import datetime, timezone

import torch
from diffusers import WanTransformer3DModel

from generator_rl.policy import LEARNER, LoraSpec

WAN = {
    "1.3b": dict(num_attention_heads=12, ffn_dim=8960, num_layers=30),
    "14b": dict(num_attention_heads=40, ffn_dim=13824, num_layers=40),
}


def lora_shapes(model: str, rank: int) -> list[torch.Size]:
    """Shapes of the trainable LoRA tensors of the Wan ``model`` with the kit's LoRA targets at ``rank``."""
    with torch.device("meta"):
        transformer = WanTransformer3DModel(attention_head_dim=128, text_dim=4096, **WAN[model])
        transformer.add_adapter(LoraSpec(rank=rank, alpha=2 * rank).peft_config(), adapter_name=LEARNER)
    return [parameter.shape for name, parameter in transformer.named_parameters() if "lora_" in name]


def stepped(shapes: list[torch.Size], *, fused: bool, steps: int, device: torch.device) -> tuple[list[torch.Tensor], list[float]]:
    """Weights after ``steps`` AdamW steps (same seeds for either kernel) and the seconds of each step."""
    generator = torch.Generator(device).manual_seed(0)
    weights = [torch.nn.Parameter(torch.randn(shape, generator=generator, device=device) * 0.01) for shape in shapes]
    optimizer = torch.optim.AdamW(weights, lr=1e-4, weight_decay=1e-4, fused=fused or None, foreach=None if fused else True)
    seconds = []
    for _ in range(steps):
        for weight in weights:
            weight.grad = torch.randn(weight.shape, generator=generator, device=device) * 1e-3
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return [weight.detach() for weight in weights], seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(WAN), default="1.3b")
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6, help="steps per kernel; the first is a warm-up")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json_out", default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    shapes = lora_shapes(args.model, args.rank)
    foreach, foreach_seconds = stepped(shapes, fused=False, steps=args.steps, device=device)
    fused, fused_seconds = stepped(shapes, fused=True, steps=args.steps, device=device)
    report = {
        "machine": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU",
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "model": args.model, "rank": args.rank,
        "lora_tensors": len(shapes), "lora_weights": sum(shape.numel() for shape in shapes),
        "foreach_step_s": statistics.median(foreach_seconds[1:]), "fused_step_s": statistics.median(fused_seconds[1:]),
        "max_abs_difference": max(float((a - b).abs().max()) for a, b in zip(fused, foreach)),
    }
    print(f"Wan {args.model} LoRA r{args.rank}: {report['lora_tensors']} tensors, {report['lora_weights'] / 1e6:.1f} M weights "
          f"on {report['machine']} ({report['threads']} threads)\n"
          f"  foreach AdamW step  {report['foreach_step_s'] * 1e3:8.1f} ms\n"
          f"  fused AdamW step    {report['fused_step_s'] * 1e3:8.1f} ms  "
          f"({report['foreach_step_s'] / report['fused_step_s']:.2f}x)\n"
          f"  max |fused - foreach| after {args.steps} steps: {report['max_abs_difference']:.2e}")
    if args.json_out:
        with open(args.json_out, "w") as handle:
            json.dump(report, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
