"""The frozen backbones of VBench's consistency and aesthetic dimensions, loaded from VBench's own weight files.

- **DINO ViT-B/16** (``subject_consistency``): the state dict ``dino_vitbase16_pretrain.pth`` of
  facebookresearch/dino, keys as DINO's ``VisionTransformer`` names them. timm's ``VisionTransformer``
  (``vit_base_patch16_224``, ``num_classes=0``) has exactly these keys, so the file loads strictly into it. The
  feature is DINO's ``forward``: the CLS token after the final LayerNorm. Sizes are read from the state dict
  (heads = width / 64, DINO's head width for every ViT it released), so a small random file in the same
  layout loads through the same code.
- **OpenAI CLIP ViT-B/32 and ViT-L/14 image towers** (``background_consistency``, ``aesthetic_quality``): the
  files ``ViT-B-32.pt`` and ``ViT-L-14.pt`` are TorchScript archives (traced modules) whose state dict uses
  the key names of OpenAI's ``clip/model.py``. open_clip's ``build_model_from_openai_state_dict`` builds its
  ``CLIP`` from that state dict; we keep the image tower only.
- **LAION aesthetic predictor v1** (``aesthetic_quality``): ``sa_0_4_vit_l_14_linear.pth`` of
  LAION-AI/aesthetic-predictor, a linear layer 768 -> 1 saved as ``{"weight": [1, 768], "bias": [1]}``.

**No pickled code runs.** The ``.pth`` files are read with ``torch.load(weights_only=True)``
(:func:`reward.clip_encoders.read_state_dict`). A CLIP ``.pt`` file must be a TorchScript zip archive (checked
before anything is read), and is read by ``torch.jit.load``, as open_clip's ``load_openai_model`` and OpenAI's
``clip.load`` do: TorchScript's own deserializer restores TorchScript modules and tensors only and never
imports or calls Python objects (code in an archive is TorchScript, run by TorchScript's interpreter). We take
the state dict and call none of the archive's methods. open_clip's ``load_openai_model`` itself is not used,
because it falls back to a plain ``torch.load`` for a file that is not a TorchScript archive.

Each extractor takes images already resized and normalised (the metric functions do VBench's preprocessing)
and returns raw float32 features; the metrics L2-normalise them. Writers of random weights in the same layouts
take the architecture sizes, so the tests use tiny files and a GPU benchmark full-size ones. User guide:
docs/vbench/weights.md.
"""

from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from reward.clip_encoders import load_strictly, read_state_dict
from reward.errors import CheckpointError
from reward.tiny_clip import ClipSize, open_clip_config

DINO_HEAD_WIDTH = 64  # every released DINO ViT (S, B; patch 8 and 16) uses 64-wide attention heads
OPENAI_HEAD_WIDTH = 64  # what open_clip's OpenAI builder assumes for both towers
# scalars OpenAI's archives carry beside the weights; both OpenAI's and open_clip's builders drop them
OPENAI_SCALARS = ("input_resolution", "context_length", "vocab_size")


@dataclass(frozen=True)
class DinoSize:
    """Sizes of a DINO ViT: token width, blocks, MLP ratio, patch and the image side of its position grid."""

    width: int
    depth: int
    patch_size: int = 16
    image_size: int = 224
    mlp_ratio: float = 4.0


DINO_VIT_B_16 = DinoSize(width=768, depth=12)
TINY_DINO = DinoSize(width=64, depth=2)


# ----------------------------------------------------------------------------------------------- DINO


def dino_vit(size: DinoSize) -> nn.Module:
    """timm's ViT in DINO's layout: ``vit_base_patch16_224`` at ``DINO_VIT_B_16``, no classifier head, any
    input size (``dynamic_img_size``), LayerNorm eps 1e-6 and QKV bias as DINO's ``vit_base``."""
    from timm.models.vision_transformer import VisionTransformer

    if size.width % DINO_HEAD_WIDTH:
        raise CheckpointError(f"DINO width {size.width} is not a multiple of the head width {DINO_HEAD_WIDTH}")
    return VisionTransformer(
        img_size=size.image_size, patch_size=size.patch_size, embed_dim=size.width, depth=size.depth,
        num_heads=size.width // DINO_HEAD_WIDTH, mlp_ratio=size.mlp_ratio, qkv_bias=True, num_classes=0,
        dynamic_img_size=True,
    )


def dino_size(state: dict[str, torch.Tensor], where: Path) -> DinoSize:
    """The sizes a DINO ViT state dict was saved at; a file of another model is a :class:`CheckpointError`."""
    needed = ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.mlp.fc1.weight")
    absent = [key for key in needed if key not in state]
    if absent:
        raise CheckpointError(
            f"{where}: not a DINO ViT state dict (dino_vitbase16_pretrain.pth layout): no key {absent[0]!r}; "
            f"its first keys are {sorted(state)[:5]}"
        )
    width = state["cls_token"].shape[-1]
    patch_size = state["patch_embed.proj.weight"].shape[-1]
    grid = math.isqrt(state["pos_embed"].shape[1] - 1)
    depth = len({key.split(".")[1] for key in state if key.startswith("blocks.")})
    return DinoSize(width=width, depth=depth, patch_size=patch_size, image_size=grid * patch_size,
                    mlp_ratio=state["blocks.0.mlp.fc1.weight"].shape[0] / width)


def dino_position_embedding(position: torch.Tensor, rows: int, cols: int, *, square_input: bool) -> torch.Tensor:
    """DINO's position embedding for a ``rows`` x ``cols`` patch grid: ``(1, 1 + N, D)`` -> ``(1, 1 + rows*cols, D)``.

    As ``interpolate_pos_encoding`` in facebookresearch/dino ``vision_transformer.py`` (commit 04c0ad9): kept
    as is when the grid has the trained patch count and the input image is square; otherwise the patch part is
    resized bicubically by *scale factors* (rows + 0.1) / grid and (cols + 0.1) / grid (the 0.1 guards the
    floor of the output size). timm's own resampling asks for the output size instead (antialiased), which
    samples slightly different points, so VBench's 224x388 frames need DINO's rule to match it.
    """
    grid_tokens = position.shape[1] - 1
    if rows * cols == grid_tokens and square_input:
        return position
    grid = math.isqrt(grid_tokens)
    width = position.shape[-1]
    patch = position[:, 1:].reshape(1, grid, grid, width).permute(0, 3, 1, 2)
    patch = F.interpolate(patch, scale_factor=((rows + 0.1) / grid, (cols + 0.1) / grid), mode="bicubic")
    patch = patch.permute(0, 2, 3, 1).reshape(1, rows * cols, width)
    return torch.cat([position[:, :1], patch], dim=1)


class DinoEncoder:
    """DINO's CLS feature: images ``(N, 3, H, W)`` normalised with ImageNet's mean/std -> ``(N, D)`` float32.

    The trailing ``H % patch`` rows and ``W % patch`` columns are dropped, as DINO's stride-``patch`` convolution
    drops them (VBench's 224x388 frames are seen as 224x384).
    """

    def __init__(self, vit: nn.Module, *, device: torch.device, dtype: torch.dtype) -> None:
        self.vit = vit.to(device, dtype).eval()  # eval: dropout / drop-path off
        self.device, self.dtype = device, dtype
        self.patch_size = vit.patch_embed.patch_size[0]
        self.width = vit.embed_dim

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        images = images[..., : height - height % self.patch_size, : width - width % self.patch_size]
        patches = self.vit.patch_embed(images.to(self.device, self.dtype))  # (N, rows, cols, D): dynamic size
        count, rows, cols, channels = patches.shape
        position = dino_position_embedding(self.vit.pos_embed, rows, cols, square_input=height == width)
        tokens = torch.cat([self.vit.cls_token.expand(count, -1, -1), patches.reshape(count, -1, channels)], 1)
        tokens = self.vit.norm(self.vit.blocks(self.vit.norm_pre(tokens + position)))
        return tokens[:, 0].float()


def load_dino(path: Path, *, device: torch.device, dtype: torch.dtype = torch.float32) -> DinoEncoder:
    """DINO ViT from ``dino_vitbase16_pretrain.pth`` (or a file in its layout), loaded strictly."""
    state = read_state_dict(path)
    vit = dino_vit(dino_size(state, path))
    load_strictly(vit, state, path)
    return DinoEncoder(vit, device=device, dtype=dtype)


def write_dino(path: Path, size: DinoSize, *, seed: int = 0) -> Path:
    """Random weights saved as DINO released its ViTs: ``torch.save`` of the fp32 state dict, no head."""
    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(dino_vit(size).state_dict(), path)
    return path


# ----------------------------------------------------------------------------------------------- CLIP


@dataclass(frozen=True)
class OpenAIClipSize:
    """An OpenAI CLIP archive: the towers' sizes plus the text vocabulary (49,408 in every OpenAI model)."""

    towers: ClipSize
    vocab_size: int = 49408


class ClipImageEncoder:
    """An OpenAI CLIP image tower (``encode_image``): images ``(N, 3, S, S)`` normalised with CLIP's mean/std at
    the tower's input size -> ``(N, D)`` float32 projected features."""

    def __init__(self, visual: nn.Module, *, device: torch.device) -> None:
        self.visual = visual.to(device).eval()
        self.device = device
        self.dtype = visual.conv1.weight.dtype  # VBench's clip.load casts the input to the weights' dtype
        self.output_dim = visual.output_dim
        self.patch_size = visual.conv1.weight.shape[-1]

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual(images.to(self.device, self.dtype)).float()


def openai_clip_model(size: OpenAIClipSize) -> nn.Module:
    """open_clip's ``CLIP`` built as for an OpenAI archive (QuickGELU, fp32-computing LayerNorms)."""
    from open_clip.model import CLIP

    config = open_clip_config(size.towers)
    config["text_cfg"]["vocab_size"] = size.vocab_size
    return CLIP(**config, cast_dtype=torch.float16)


def write_openai_clip(path: Path, size: OpenAIClipSize, *, seed: int = 0) -> Path:
    """Random weights as OpenAI released CLIP: a traced TorchScript archive (``forward``, ``encode_image``,
    ``encode_text``) whose state dict has OpenAI's key names and dtypes — convolution, linear, attention and
    projection weights in fp16, LayerNorms and embeddings in fp32 — plus the three scalars of
    :data:`OPENAI_SCALARS`. The causal text mask is a traced constant, not a state-dict entry, as in OpenAI's."""
    from open_clip.model import convert_weights_to_lp

    torch.manual_seed(seed)
    model = openai_clip_model(size)
    convert_weights_to_lp(model, torch.float16)
    model.attn_mask = model._buffers.pop("attn_mask")  # a plain attribute: traced as a constant
    scalars = (size.towers.image_size, model.positional_embedding.shape[0], size.vocab_size)
    for name, value in zip(OPENAI_SCALARS, scalars):
        model.__dict__.pop(name, None)  # open_clip keeps two of them as ints
        model.register_buffer(name, torch.tensor(value))
    image = torch.zeros(1, 3, size.towers.image_size, size.towers.image_size, dtype=torch.float16)
    text = torch.zeros(1, model.positional_embedding.shape[0], dtype=torch.long)
    with torch.no_grad():
        traced = torch.jit.trace_module(
            model.eval(), {"forward": (image, text), "encode_image": (image,), "encode_text": (text,)},
            check_trace=False,
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(traced, str(path))
    return path


def require_torchscript_archive(path: Path) -> None:
    """Refuse anything but a TorchScript zip before a byte of it is deserialised: a pickle or a ``torch.save``
    file (which would need Python's unpickler) is a :class:`CheckpointError`."""
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: not a TorchScript archive (OpenAI's CLIP .pt format); it is not even a zip "
                              "file (a pickle?), so it is refused unread")
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    if not any(name.count("/") == 1 and name.endswith("/constants.pkl") for name in names):
        raise CheckpointError(f"{path}: a zip without TorchScript's constants.pkl (a torch.save file?), not an "
                              "OpenAI CLIP TorchScript archive; it is refused unread")


def openai_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of an OpenAI CLIP TorchScript archive (see the module docstring on safety)."""
    require_torchscript_archive(path)
    try:
        archive = torch.jit.load(str(path), map_location="cpu")
    except RuntimeError as error:
        raise CheckpointError(f"{path}: unreadable TorchScript archive ({error})") from error
    return dict(archive.state_dict())


def load_openai_clip_image_tower(
    path: Path, *, patch_size: int, device: torch.device, dtype: torch.dtype | None = None
) -> ClipImageEncoder:
    """The image tower of an OpenAI CLIP ViT archive whose patch is ``patch_size`` (32 for ViT-B-32.pt, 14
    for ViT-L-14.pt: a swapped file is refused).

    ``dtype`` None runs it as VBench's ``clip.load`` does: OpenAI's mixed fp16 weights on a GPU, fp32 on the
    CPU. float32 / bfloat16 convert as open_clip's ``load_openai_model`` does for those precisions.
    """
    from open_clip.model import build_model_from_openai_state_dict, convert_weights_to_lp

    state = openai_state_dict(path)
    if "visual.proj" not in state or "visual.conv1.weight" not in state:
        raise CheckpointError(f"{path}: not an OpenAI CLIP ViT archive (no visual.proj / visual.conv1.weight; its "
                              f"first keys are {sorted(state)[:5]})")
    found_patch = state["visual.conv1.weight"].shape[-1]
    if found_patch != patch_size:
        raise CheckpointError(f"{path}: holds a CLIP ViT with patch {found_patch}, expected patch {patch_size} "
                              "(are ViT-B-32.pt and ViT-L-14.pt swapped?)")
    try:
        model = build_model_from_openai_state_dict(state, cast_dtype=torch.float16)
    except (KeyError, RuntimeError) as error:
        raise CheckpointError(f"{path}: state dict does not fit OpenAI's CLIP layout ({error})") from error
    if dtype is None:
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    if dtype != torch.float16:
        model.float()
        if dtype != torch.float32:
            convert_weights_to_lp(model, dtype)
    return ClipImageEncoder(model.visual, device=device)


# ----------------------------------------------------------------------------------------- LAION head


class LinearAestheticHead:
    """LAION's aesthetic predictor v1: L2-normalised CLIP ViT-L/14 features ``(N, D)`` -> scores ``(N,)``
    (about 3-8 with the released weights; VBench divides by 10). Runs in fp32."""

    def __init__(self, linear: nn.Linear, *, device: torch.device) -> None:
        self.linear = linear.to(device, torch.float32).eval()
        self.device = device
        self.input_dim = linear.in_features

    @torch.no_grad()
    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features.to(self.device, torch.float32)).squeeze(-1)


def load_aesthetic_head(path: Path, *, device: torch.device) -> LinearAestheticHead:
    """The linear head of ``sa_0_4_vit_l_14_linear.pth``: exactly ``weight [1, D]`` and ``bias [1]``."""
    state = read_state_dict(path)
    if set(state) != {"weight", "bias"}:
        hint = (" (that is LAION's improved predictor v2, an MLP; VBench uses the linear v1 head)"
                if any(key.startswith("layers.") for key in state) else "")
        raise CheckpointError(f"{path}: expected exactly the keys weight and bias of a linear head, found "
                              f"{sorted(state)[:8]}{hint}")
    weight, bias = state["weight"], state["bias"]
    if weight.dim() != 2 or weight.shape[0] != 1 or tuple(bias.shape) != (1,):
        raise CheckpointError(f"{path}: a linear head D -> 1 has weight [1, D] and bias [1], found weight "
                              f"{list(weight.shape)} and bias {list(bias.shape)}")
    linear = nn.Linear(weight.shape[1], 1)
    load_strictly(linear, {"weight": weight.float(), "bias": bias.float()}, path)
    return LinearAestheticHead(linear, device=device)


def write_aesthetic_head(path: Path, input_dim: int, *, seed: int = 0) -> Path:
    """Random weights as LAION saved the v1 head: ``torch.save({"weight": [1, D], "bias": [1]})`` in fp32."""
    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(nn.Linear(input_dim, 1).state_dict(), path)
    return path
