"""Tiny random weights in VBench's cache layout, written with the official venv's own model classes.

Run with VBench's interpreter (``python official_weights.py DIR``): it builds openai-clip's CLIP, pyiqa's MUSIQ
and VBench's vendored RAFT, so every file is a state dict those loaders accept. Test-only: the kit's
``write_random_weights`` writes the same layout from the kit's side.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch


def save(state: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({key: tensor.contiguous() for key, tensor in state.items()}, path)


def save_tiny_clip(path: Path, *, embed_dim: int, patch: int) -> None:
    """openai-clip's CLIP at 224 px, one 64-wide layer per tower, traced to TorchScript like OpenAI's files
    (``clip.load`` rebuilds the model from the archive's tensor shapes)."""
    from clip.model import CLIP

    model = CLIP(embed_dim, 224, 1, 64, patch, context_length=77, vocab_size=64, transformer_width=64,
                 transformer_heads=1, transformer_layers=1).eval()
    traced = torch.jit.trace(model, (torch.zeros(1, 3, 224, 224), torch.zeros(1, 77, dtype=torch.long)))
    path.parent.mkdir(parents=True, exist_ok=True)
    traced.save(str(path))


def write(folder: Path) -> None:
    from easydict import EasyDict
    from pyiqa.archs.musiq_arch import MUSIQ
    from timm.models.vision_transformer import VisionTransformer
    from vbench.third_party.RAFT.core.raft import RAFT

    torch.manual_seed(0)
    dino = VisionTransformer(patch_size=16, embed_dim=64, depth=1, num_heads=1, num_classes=0)
    save(dino.state_dict(), folder / "dino_model/dino_vitbase16_pretrain.pth")
    save_tiny_clip(folder / "clip_model/ViT-B-32.pt", embed_dim=512, patch=32)
    save_tiny_clip(folder / "clip_model/ViT-L-14.pt", embed_dim=32, patch=14)  # the released one embeds in 768
    save(torch.nn.Linear(32, 1).state_dict(), folder / "aesthetic_model/emb_reader/sa_0_4_vit_l_14_linear.pth")
    musiq = MUSIQ(pretrained=False, hidden_size=64, num_heads=1, mlp_dim=128, num_layers=1)
    save(musiq.state_dict(), folder / "pyiqa_model/musiq_spaq_ckpt-358bb6af.pth")
    raft = RAFT(EasyDict(small=False, mixed_precision=False, alternate_corr=False))
    save({f"module.{key}": tensor for key, tensor in raft.state_dict().items()},
         folder / "raft_model/models/raft-things.pth")


if __name__ == "__main__":
    write(Path(sys.argv[1]))
