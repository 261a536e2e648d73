"""Run by test_fsdp_checkpoint under torchrun on 2 gloo (CPU) ranks: the tiny Wan policy sharded with FSDP2
(``fully_shard`` per transformer block and at the root), two AdamW + EMA steps, then the LoRA and the EMA saved
through ``generator_rl.checkpoint`` and loaded into a fresh, differently sharded policy (argv: model, output
folder). Each rank writes ``rank_<r>.safetensors``: its slices after training and after loading, gathered by
hand with ``all_gather`` (not by the code under test), so the test compares them with the files."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from diffusers.training_utils import EMAModel  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from torch.distributed.fsdp import fully_shard  # noqa: E402

from generator_rl.checkpoint import (  # noqa: E402
    ema_state, load_ema, load_lora, load_reference, lora_state_dict, reference_state, save_ema, save_lora,
    save_reference,
)
from generator_rl.policy import VideoShape  # noqa: E402
from tests.generator_rl.test_policy import tiny_policy_arguments  # noqa: E402


def sharded_policy(model: Path, *, seed: int, per_block: bool):
    """The tiny policy (LoRA initialised from ``seed``, the same on every rank) under FSDP2."""
    torch.manual_seed(seed)
    policy = tiny_policy_arguments(model).load_policy(torch.device("cpu"))
    if per_block:
        for block in policy.transformer.blocks:
            fully_shard(block)
    fully_shard(policy.transformer)
    return policy


def gathered_by_hand(named: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every DTensor whole, from its local slices (dim-0 shards of equal size) and ``all_gather``."""
    result = {}
    for name, tensor in named.items():
        local = tensor.to_local().detach().contiguous()
        parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, local)
        result[name] = torch.cat(parts)
    return result


def train(policy, ema: EMAModel, optimizer: torch.optim.Optimizer, steps: int) -> None:
    """Steps pulling the velocity toward zero on latents that differ per rank (so FSDP's gradient reduction
    matters)."""
    shape = VideoShape(height=32, width=32, num_frames=9)
    conditional, unconditional = policy.prompt_embeddings(["a red square moving left"])
    generator = torch.Generator().manual_seed(100 + dist.get_rank())
    for _ in range(steps):
        latents = torch.randn(policy.latent_shape(1, shape), generator=generator)
        loss = policy.velocity(latents, 500.0, conditional, unconditional, 1.0).square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        ema.step(policy.trainable_parameters())


if __name__ == "__main__":
    model, output = Path(sys.argv[1]), Path(sys.argv[2])
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    policy = sharded_policy(model, seed=0, per_block=True)
    named = policy.named_trainable_parameters()
    optimizer = torch.optim.AdamW(named.values(), lr=1e-3)
    ema = EMAModel(list(named.values()), decay=0.5)
    train(policy, ema, optimizer, steps=2)
    policy.refresh_reference()  # online Flow-DPO's frozen copy, sliced like the LoRA
    lora, shadow, reference = lora_state_dict(policy), ema_state(ema, named), reference_state(policy)  # collectives
    if rank == 0:
        save_lora(policy, output / "checkpoint", lora)
        save_ema(ema, named, output / "checkpoint", shadow)
        save_reference(reference, output / "checkpoint")
    dist.barrier()
    trained = gathered_by_hand(named)
    ema_trained = gathered_by_hand(dict(zip(named, ema.shadow_params)))

    fresh = sharded_policy(model, seed=1, per_block=False)  # other initial LoRA, other sharding
    fresh_named = fresh.named_trainable_parameters()
    fresh_ema = EMAModel(list(fresh_named.values()), decay=0.5)
    load_lora(fresh, output / "checkpoint")
    load_ema(fresh_ema, fresh_named, output / "checkpoint")
    load_reference(fresh, output / "checkpoint")
    loaded = gathered_by_hand(fresh_named)
    ema_loaded = gathered_by_hand(dict(zip(fresh_named, fresh_ema.shadow_params)))
    reference_loaded = gathered_by_hand(fresh.reference_lora)
    first = next(iter(named))
    flags = {
        "sharded": named[first].to_local().shape[0] < trained[first].shape[0],
        "local_equal": all(torch.equal(named[name].to_local(), fresh_named[name].to_local()) for name in named),
    }
    tensors = {f"{stage}/{name}": tensor
               for stage, values in [("trained", trained), ("loaded", loaded), ("ema_trained", ema_trained),
                                     ("ema_loaded", ema_loaded), ("reference_loaded", reference_loaded)]
               for name, tensor in values.items()}
    tensors.update({name: torch.tensor(value) for name, value in flags.items()})
    save_file(tensors, str(output / f"rank_{rank}.safetensors"))
    dist.destroy_process_group()
