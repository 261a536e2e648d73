"""Runs the official ``vbench`` package (PyPI 0.1.5) on a list of videos; started by ``benchmarks/vbench/official.py``.

This file runs in VBench's OWN interpreter (a separate venv, docs/vbench/official.md), so it imports only the
standard library, torch and what that venv holds — never the kit's packages. It reads one request JSON (argv[1])
written by :func:`benchmarks.vbench.official.run_official` and writes one results JSON.

What it does, in order:
1. Lays out a temporary VBench cache from the ``--weights`` folder with symlinks (the request names every link):
   ``$VBENCH_CACHE_DIR`` gets the CLIP, LAION-head, MUSIQ and RAFT files, ``$TORCH_HOME/hub/checkpoints/`` the
   DINO file, because DINO's ``hubconf.py`` reads its weights from there even in VBench's local mode. Both
   variables are set before ``import vbench``, which reads ``VBENCH_CACHE_DIR`` at import time.
2. Links every video into one folder under a unique name (VBench's ``custom_input`` mode takes a folder).
3. Calls ``VBench(...).evaluate(..., mode="custom_input", local=True, dimension_list=...)``.
4. Maps the per-video records of VBench's ``{name}_eval_results.json`` back to the caller's paths.

Three model loaders are adapted, all so that a weights file of any size of the same architecture loads (the tiny
random files of the tests as well as the released ones, for which they build exactly VBench's model):
- DINO: VBench loads ``dino_vitb16`` through ``torch.hub`` from a clone of github.com/facebookresearch/dino, which
  no package index ships. When the weights folder holds that clone (``dino_model/facebookresearch_dino_main/``
  with ``hubconf.py``, as VBench's own cache does), it is used as is. Otherwise ``torch.hub.load`` of
  ``dino_vitb16`` is answered by :func:`dino_from_timm`: DINO's forward (``vision_transformer.py``: patch
  convolution, CLS token, position embeddings interpolated by DINO's scale-factor rule, blocks, final norm, CLS
  output) on timm's modules holding the DINO state dict. Against DINO's own code on random ViT-B/16 weights it
  agrees to float32 rounding (docs/vbench/official.md). The results record which one ran.
- MUSIQ: VBench builds ``pyiqa``'s MUSIQ with its default sizes; the sizes are read from the checkpoint instead
  (hidden width, MLP width, layer count; 64 channels per head as in the released model).
- LAION aesthetic head: VBench builds ``nn.Linear(768, 1)``; the input width is read from the file instead
  (768 for the released head, whose CLIP ViT-L/14 embeds in 768).
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from importlib import metadata
from pathlib import Path

IMPORT_FAILED = 3  # exit status: the interpreter cannot import vbench (or torch); the caller reports a ConfigError
RUN_NAME = "official"
DINO_ENTRY = "dino_vitb16"
DINO_WEIGHTS = "hub/checkpoints/dino_vitbase16_pretrain.pth"  # under $TORCH_HOME, where DINO's hubconf reads it
DINO_REPO = "dino_model/facebookresearch_dino_main"  # under $VBENCH_CACHE_DIR, VBench's local-mode hub folder
AESTHETIC_HEAD = "sa_0_4_vit_l_14_linear.pth"  # in VBench's aesthetic_model/emb_reader/ folder
HEAD_DIM = 64  # channels per attention head in DINO ViT-B/16 (768 / 12) and MUSIQ (384 / 6)
DINO_STAND_IN = "DINO forward on timm modules (no facebookresearch/dino clone in the weights folder)"
VERSIONED = ("vbench", "torch", "torchvision", "timm", "pyiqa", "openai-clip", "numpy", "opencv-python")


def make_links(root: Path, links: dict[str, str]) -> None:
    """Symlink ``root / relative`` -> ``source`` for every entry."""
    for relative, source in links.items():
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(source)


def link_videos(folder: Path, videos: list[str]) -> dict[str, str]:
    """Link each video into ``folder`` under an index-prefixed name; return link path -> caller's path."""
    folder.mkdir()
    names = {}
    for index, video in enumerate(videos):
        link = folder / f"{index:06d}_{Path(video).name}"
        link.symlink_to(video)
        names[str(link)] = video
    return names


def dino_position_embedding(table, rows: int, columns: int):
    """DINO's ``interpolate_pos_encoding``: the square grid of patch embeddings resized bicubically by a SCALE
    FACTOR of (n + 0.1) / grid per axis (the 0.1 guards against floor errors), so the sampling positions differ
    slightly from resizing to a target size, which is what timm does."""
    import torch
    import torch.nn.functional as F

    grid = math.isqrt(table.shape[1] - 1)
    if rows == columns == grid:
        return table
    patches = table[:, 1:].reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, scale_factor=((rows + 0.1) / grid, (columns + 0.1) / grid), mode="bicubic")
    if patches.shape[-2:] != (rows, columns):
        raise ValueError(f"position grid {tuple(patches.shape[-2:])} != patch grid {(rows, columns)}")
    return torch.cat([table[:, :1], patches.permute(0, 2, 3, 1).reshape(1, rows * columns, -1)], dim=1)


def dino_from_timm(checkpoint: Path):
    """DINO's ViT forward on timm's modules, sized from the state dict (same keys as DINO's own model)."""
    import torch
    from timm.models.vision_transformer import VisionTransformer

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    width = state["cls_token"].shape[-1]
    patch = state["patch_embed.proj.weight"].shape[-1]
    depth = len({key.split(".")[1] for key in state if key.startswith("blocks.")})
    vit = VisionTransformer(
        img_size=math.isqrt(state["pos_embed"].shape[1] - 1) * patch, patch_size=patch, embed_dim=width,
        depth=depth, num_heads=width // HEAD_DIM, mlp_ratio=state["blocks.0.mlp.fc1.weight"].shape[0] / width,
        qkv_bias=True, num_classes=0,
    )
    vit.load_state_dict(state, strict=True)

    class DinoForward(torch.nn.Module):
        """Patch convolution (its stride drops the pixels past the last whole patch), CLS token, DINO's
        position embedding, the blocks, the final norm; returns the CLS token (DINO's ``forward``)."""

        def __init__(self) -> None:
            super().__init__()
            self.vit = vit

        def forward(self, images):
            grid = self.vit.patch_embed.proj(images)
            tokens = grid.flatten(2).transpose(1, 2)
            tokens = torch.cat([self.vit.cls_token.expand(len(tokens), -1, -1), tokens], dim=1)
            tokens = tokens + dino_position_embedding(self.vit.pos_embed, grid.shape[-2], grid.shape[-1])
            return self.vit.norm(self.vit.blocks(tokens))[:, 0]

    return DinoForward().eval()


def answer_dino_from_timm(torch_home: Path) -> None:
    """Route ``torch.hub.load`` of DINO's ViT-B/16 to :func:`dino_from_timm`; every other call is untouched."""
    import torch

    hub_load = torch.hub.load

    def load(repo_or_dir, model, *args, **kwargs):
        if model == DINO_ENTRY:
            return dino_from_timm(torch_home / DINO_WEIGHTS)
        return hub_load(repo_or_dir, model, *args, **kwargs)

    torch.hub.load = load


def size_musiq_from_checkpoint() -> None:
    """Make VBench's ``MUSIQ(pretrained_model_path=...)`` build the sizes the checkpoint holds."""
    import torch
    import vbench.imaging_quality as imaging
    from pyiqa.archs.musiq_arch import MUSIQ

    def sized_musiq(pretrained_model_path: str):
        state = torch.load(pretrained_model_path, map_location="cpu", weights_only=True)
        hidden = state["embedding.weight"].shape[0]
        blocks = {key.split(".")[2] for key in state if key.startswith("transformer_encoder.transformer.")}
        return MUSIQ(
            hidden_size=hidden, num_heads=hidden // HEAD_DIM, num_layers=len(blocks),
            mlp_dim=state["transformer_encoder.transformer.encoderblock_0.mlp.fc1.weight"].shape[0],
            pretrained_model_path=pretrained_model_path,
        )

    imaging.MUSIQ = sized_musiq


def size_aesthetic_head_from_checkpoint() -> None:
    """Make VBench's ``get_aesthetic_model(folder)`` build ``Linear(width, 1)`` with the file's width, not 768."""
    import torch
    import vbench.aesthetic_quality as aesthetic

    def sized_head(cache_folder: str):
        state = torch.load(Path(cache_folder) / AESTHETIC_HEAD, map_location="cpu", weights_only=True)
        head = torch.nn.Linear(state["weight"].shape[1], 1)
        head.load_state_dict(state)
        return head.eval()

    aesthetic.get_aesthetic_model = sized_head


def versions() -> dict[str, str]:
    """Installed versions of the packages that decide VBench's numbers."""
    found = {"python": sys.version.split()[0]}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def per_video_results(eval_results: dict, names: dict[str, str]) -> dict[str, dict[str, float]]:
    """VBench's ``{dim: [aggregate, [{video_path, video_results}, ...]]}`` -> caller's path -> dim -> float."""
    per_video: dict[str, dict[str, float]] = {}
    for dimension, (_, records) in eval_results.items():
        for record in records:
            per_video.setdefault(names[record["video_path"]], {})[dimension] = float(record["video_results"])
    return per_video


def evaluate(request: dict, scratch: Path) -> dict:
    """Steps 1-4 of the module docstring; returns the results document."""
    cache, torch_home = scratch / "vbench_cache", scratch / "torch_home"
    make_links(cache, request["cache_links"])
    make_links(torch_home, request["torch_links"])
    os.environ["VBENCH_CACHE_DIR"] = str(cache)
    os.environ["TORCH_HOME"] = str(torch_home)
    names = link_videos(scratch / "videos", request["videos"])
    try:
        import torch
        from vbench import VBench
    except ImportError as error:
        print(f"cannot import vbench: {error}", file=sys.stderr)
        sys.exit(IMPORT_FAILED)

    dino = "facebookresearch/dino hubconf.py"
    if "subject_consistency" in request["dimensions"] and not (cache / DINO_REPO / "hubconf.py").is_file():
        (cache / DINO_REPO).mkdir(parents=True, exist_ok=True)  # VBench would `git clone` a missing folder
        answer_dino_from_timm(torch_home)
        dino = DINO_STAND_IN
    if "imaging_quality" in request["dimensions"]:
        size_musiq_from_checkpoint()
    if "aesthetic_quality" in request["dimensions"]:
        size_aesthetic_head_from_checkpoint()

    import vbench

    device = request["device"] or ("cuda" if torch.cuda.is_available() else "cpu")
    output = Path(request["output_dir"])
    runner = VBench(torch.device(device), str(Path(vbench.__file__).parent / "VBench_full_info.json"), str(output))
    runner.evaluate(
        videos_path=str(scratch / "videos"), name=RUN_NAME, dimension_list=request["dimensions"], local=True,
        mode="custom_input", imaging_quality_preprocessing_mode="longer",
    )
    eval_results = json.loads((output / f"{RUN_NAME}_eval_results.json").read_text())
    return {
        "per_video": per_video_results(eval_results, names),
        "aggregate": {dimension: float(entry[0]) for dimension, entry in eval_results.items()},
        "device": device,
        "dino": dino,
        "versions": versions(),
    }


def main(request_path: str) -> None:
    request = json.loads(Path(request_path).read_text())
    with tempfile.TemporaryDirectory(prefix="descore-vbench-") as scratch:
        results = evaluate(request, Path(scratch))
    Path(request["results"]).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
