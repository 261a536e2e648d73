"""VBench's weight layout and the DINO / CLIP / LAION-head extractors (benchmarks/vbench/weights.py, backbones.py).

Random weights are written in the exact upstream formats (DINO's state dict, OpenAI's TorchScript archives, the
LAION head) and loaded through the code users run; features are compared with independent computations:
DINO's forward written out here in float64, open_clip's own OpenAI loader and the archive's TorchScript code.
"""

from __future__ import annotations

import hashlib
import logging
import math
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.vbench.backbones import (
    DINO_VIT_B_16,
    dino_size,
    dino_vit,
    load_aesthetic_head,
    load_dino,
    load_openai_clip_image_tower,
    openai_clip_model,
    openai_state_dict,
)
from benchmarks.vbench.weights import (
    NOT_PUBLISHED,
    RANDOM_SIZES,
    WEIGHT_FILES,
    check_weights,
    require_weight_files,
    weight_path,
    weight_record,
    write_backbone_weights,
)
from reward.errors import CheckpointError, ConfigError
from reward.tiny_clip import save_aesthetic_head

CPU = torch.device("cpu")
BACKBONES = ("dino", "clip_b32", "clip_l14", "aesthetic_head")
# OpenAI's clip/model.py names: one residual block, then the model-level entries
OPENAI_BLOCK = (
    "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight", "attn.out_proj.bias", "ln_1.weight",
    "ln_1.bias", "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias", "ln_2.weight", "ln_2.bias",
)
OPENAI_TOP = (
    "positional_embedding", "text_projection", "logit_scale", "input_resolution", "context_length", "vocab_size",
    "token_embedding.weight", "ln_final.weight", "ln_final.bias", "visual.class_embedding",
    "visual.positional_embedding", "visual.proj", "visual.conv1.weight", "visual.ln_pre.weight", "visual.ln_pre.bias",
    "visual.ln_post.weight", "visual.ln_post.bias",
)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return write_backbone_weights(tmp_path_factory.mktemp("vbench_weights"), size="tiny", seed=0)


class Payload:
    """A pickle that runs code when loaded: it would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def reference_dino(state: dict[str, torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    """DINO's VisionTransformer.forward (facebookresearch/dino) written out in float64: CLS after the last norm."""
    s = {key: value.double() for key, value in state.items()}
    patch = s["patch_embed.proj.weight"].shape[-1]
    height, width = images.shape[-2:]
    x = F.conv2d(images.double(), s["patch_embed.proj.weight"], s["patch_embed.proj.bias"], stride=patch)
    count, dim, rows, cols = x.shape
    x = torch.cat([s["cls_token"].expand(count, -1, -1), x.flatten(2).transpose(1, 2)], dim=1)
    position, grid = s["pos_embed"], math.isqrt(s["pos_embed"].shape[1] - 1)
    if not (rows * cols == grid * grid and height == width):
        grid_embed = position[:, 1:].reshape(1, grid, grid, dim).permute(0, 3, 1, 2)
        grid_embed = F.interpolate(grid_embed, scale_factor=((rows + 0.1) / grid, (cols + 0.1) / grid), mode="bicubic")
        position = torch.cat([position[:, :1], grid_embed.flatten(2).transpose(1, 2)], dim=1)
    x = x + position
    heads = dim // 64
    depth = len({key.split(".")[1] for key in s if key.startswith("blocks.")})
    for block in range(depth):
        p = f"blocks.{block}."
        y = F.layer_norm(x, (dim,), s[p + "norm1.weight"], s[p + "norm1.bias"], 1e-6)
        q, k, v = F.linear(y, s[p + "attn.qkv.weight"], s[p + "attn.qkv.bias"]).reshape(
            count, -1, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
        attention = (q @ k.transpose(-2, -1) / math.sqrt(dim // heads)).softmax(dim=-1)
        y = (attention @ v).transpose(1, 2).reshape(count, -1, dim)
        x = x + F.linear(y, s[p + "attn.proj.weight"], s[p + "attn.proj.bias"])
        y = F.layer_norm(x, (dim,), s[p + "norm2.weight"], s[p + "norm2.bias"], 1e-6)
        y = F.linear(F.gelu(F.linear(y, s[p + "mlp.fc1.weight"], s[p + "mlp.fc1.bias"])),
                     s[p + "mlp.fc2.weight"], s[p + "mlp.fc2.bias"])
        x = x + y
    return F.layer_norm(x, (dim,), s["norm.weight"], s["norm.bias"], 1e-6)[:, 0]


# ------------------------------------------------------------------------------------------------ layout


def test_missing_files_are_named_with_where_to_get_them(tmp_path):
    with pytest.raises(ConfigError) as error:
        require_weight_files(tmp_path, list(WEIGHT_FILES))
    for entry in WEIGHT_FILES.values():
        assert str(tmp_path / entry.relative_path) in str(error.value) and entry.url in str(error.value)
    assert "lacks 6 file(s)" in str(error.value)


def test_layout_is_vbench_cache_layout():
    assert {field: entry.relative_path for field, entry in WEIGHT_FILES.items()} == {
        "dino": "dino_model/dino_vitbase16_pretrain.pth",
        "clip_b32": "clip_model/ViT-B-32.pt",
        "clip_l14": "clip_model/ViT-L-14.pt",
        "aesthetic_head": "aesthetic_model/emb_reader/sa_0_4_vit_l_14_linear.pth",
        "musiq": "pyiqa_model/musiq_spaq_ckpt-358bb6af.pth",
        "raft": "raft_model/models/raft-things.pth",
    }
    # OpenAI's download URLs carry the file's sha256
    for field in ("clip_b32", "clip_l14"):
        assert WEIGHT_FILES[field].sha256 in WEIGHT_FILES[field].url


def test_random_weights_are_recorded_as_not_published(tiny_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="benchmarks.vbench.weights"):
        records = {record.field: record for record in check_weights(tiny_dir, BACKBONES)}
    assert records["dino"].published is None and records["dino"].warning is None  # DINO publishes no digest
    for field in ("clip_b32", "clip_l14", "aesthetic_head"):
        digest = hashlib.sha256(weight_path(tiny_dir, field).read_bytes()).hexdigest()
        assert records[field].sha256 == digest and records[field].published is False
        assert NOT_PUBLISHED in records[field].warning and records[field].warning in caplog.text


def test_a_file_with_the_published_digest_passes(tiny_dir):
    path = weight_path(tiny_dir, "aesthetic_head")
    record = weight_record("aesthetic_head", path, hashlib.sha256(path.read_bytes()).hexdigest())
    assert record.published is True and record.warning is None


def test_tiny_files_are_small(tiny_dir):
    sizes = {field: weight_path(tiny_dir, field).stat().st_size for field in BACKBONES}
    assert max(sizes.values()) < 1_000_000, sizes


def test_unknown_size_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="size must be one of"):
        write_backbone_weights(tmp_path, size="huge")


def test_real_sizes_are_the_published_architectures():
    """Parameter counts of DINO ViT-B/16 (85.8 M), OpenAI CLIP ViT-B/32 (151.3 M) and ViT-L/14 (427.6 M)."""
    import timm

    sizes = RANDOM_SIZES["real"]
    with torch.device("meta"):
        dino = dino_vit(sizes.dino)
        timm_dino = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)
        counts = [sum(p.numel() for p in model.parameters())
                  for model in (dino, openai_clip_model(sizes.clip_b32), openai_clip_model(sizes.clip_l14))]
    assert counts == [85_798_656, 151_277_313, 427_616_513]
    shapes = {key: tuple(value.shape) for key, value in dino.state_dict().items()}
    assert shapes == {key: tuple(value.shape) for key, value in timm_dino.state_dict().items()}
    assert dino_size(dino.state_dict(), Path("meta")) == DINO_VIT_B_16


# -------------------------------------------------------------------------------------------------- DINO


def test_dino_is_dinos_forward(tiny_dir, tmp_path):
    """At 224x224 timm's own forward; at other sizes DINO's position-embedding interpolation. Weights of scale
    0.3 (timm's init is 0.02) let every part reach the CLS feature: timm's own position resampling at 224x388
    misses this tolerance by ~20x."""
    generator = torch.Generator().manual_seed(0)
    layout = torch.load(weight_path(tiny_dir, "dino"), weights_only=True)
    state = {key: 0.3 * torch.randn(value.shape, generator=generator) for key, value in layout.items()}
    torch.save(state, tmp_path / "dino.pth")
    encoder = load_dino(tmp_path / "dino.pth", device=CPU)
    for shape in ((2, 3, 224, 224), (2, 3, 224, 388), (1, 3, 230, 224)):  # native, VBench's frames, odd size
        images = torch.randn(*shape, generator=generator)
        torch.testing.assert_close(encoder(images), reference_dino(state, images).float(), atol=1e-5, rtol=1e-5)
    native = torch.randn(2, 3, 224, 224, generator=generator)
    with torch.no_grad():
        torch.testing.assert_close(encoder(native), encoder.vit(native))


def test_dino_refuses_other_state_dicts(tiny_dir, tmp_path):
    state = torch.load(weight_path(tiny_dir, "dino"), weights_only=True)
    cases = {
        "clip.pth": ({"weight": torch.zeros(1, 8), "bias": torch.zeros(1)}, "not a DINO ViT state dict"),
        "extra.pth": ({**state, "head.weight": torch.zeros(4, 64)}, "unexpected keys \\['head.weight'\\]"),
        "missing.pth": ({k: v for k, v in state.items() if k != "blocks.1.norm2.bias"},
                        "missing keys \\['blocks.1.norm2.bias'\\]"),
    }
    for name, (content, message) in cases.items():
        torch.save(content, tmp_path / name)
        with pytest.raises(CheckpointError, match=message):
            load_dino(tmp_path / name, device=CPU)


def test_pickled_code_is_never_run(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"cls_token": Payload(marker)}, tmp_path / "dino.pth")
    with pytest.raises(CheckpointError, match="refused"):
        load_dino(tmp_path / "dino.pth", device=CPU)
    with pytest.raises(CheckpointError, match="refused"):
        load_aesthetic_head(tmp_path / "dino.pth", device=CPU)
    (tmp_path / "plain.pt").write_bytes(pickle.dumps(Payload(marker)))
    torch.save(Payload(marker), tmp_path / "zip.pt")
    for name, message in (("plain.pt", "not even a zip"), ("zip.pt", "constants.pkl")):
        with pytest.raises(CheckpointError, match=message):
            load_openai_clip_image_tower(tmp_path / name, patch_size=32, device=CPU)
    assert not marker.exists()


# -------------------------------------------------------------------------------------------------- CLIP


def test_clip_archive_has_openais_keys_and_dtypes(tiny_dir):
    state = openai_state_dict(weight_path(tiny_dir, "clip_b32"))
    expected = set(OPENAI_TOP) | {f"{tower}resblocks.0.{name}" for tower in ("visual.transformer.", "transformer.")
                                  for name in OPENAI_BLOCK}
    assert set(state) == expected
    half = ("visual.conv1.weight", "visual.proj", "text_projection",
            "visual.transformer.resblocks.0.attn.in_proj_weight", "transformer.resblocks.0.mlp.c_fc.bias")
    full = ("visual.class_embedding", "visual.positional_embedding", "visual.ln_post.weight", "token_embedding.weight",
            "logit_scale")
    assert {state[key].dtype for key in half} == {torch.float16}
    assert {state[key].dtype for key in full} == {torch.float32}
    assert int(state["input_resolution"]) == 224 and int(state["context_length"]) == 77


@pytest.mark.parametrize("field, patch", [("clip_b32", 32), ("clip_l14", 14)])
def test_clip_features_are_open_clips_encode_image(tiny_dir, field, patch):
    import open_clip

    path = weight_path(tiny_dir, field)
    encoder = load_openai_clip_image_tower(path, patch_size=patch, device=CPU)
    images = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    features = encoder(images)
    reference = open_clip.load_openai_model(str(path), precision="fp32", device="cpu")
    with torch.no_grad():
        torch.testing.assert_close(features, reference.encode_image(images))
        traced = torch.jit.load(str(path), map_location="cpu").encode_image(images.half()).float()  # OpenAI's fp16
    assert (features - traced).abs().max() < 1e-2 * traced.abs().max()
    width = RANDOM_SIZES["tiny"].clip_b32.towers.projection_dim
    assert features.dtype == torch.float32 and features.shape == (3, width)


def test_clip_bfloat16_is_open_clips_bf16_precision(tiny_dir):
    import open_clip

    path = weight_path(tiny_dir, "clip_b32")
    encoder = load_openai_clip_image_tower(path, patch_size=32, device=CPU, dtype=torch.bfloat16)
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    reference = open_clip.load_openai_model(str(path), precision="bf16", device="cpu")
    with torch.no_grad():
        expected = reference.encode_image(images.to(torch.bfloat16)).float()
    assert encoder.dtype == torch.bfloat16
    torch.testing.assert_close(encoder(images), expected)


def test_clip_refuses_other_files(tiny_dir, tmp_path):
    with pytest.raises(CheckpointError, match="patch 32, expected patch 14"):
        load_openai_clip_image_tower(weight_path(tiny_dir, "clip_b32"), patch_size=14, device=CPU)
    torch.jit.save(torch.jit.script(nn.Linear(2, 2)), str(tmp_path / "linear.pt"))
    with pytest.raises(CheckpointError, match="not an OpenAI CLIP ViT archive"):
        load_openai_clip_image_tower(tmp_path / "linear.pt", patch_size=32, device=CPU)
    torch.save(openai_state_dict(weight_path(tiny_dir, "clip_b32")), tmp_path / "state.pt")
    with pytest.raises(CheckpointError, match="constants.pkl"):  # a state dict, not OpenAI's archive format
        load_openai_clip_image_tower(tmp_path / "state.pt", patch_size=32, device=CPU)


# ------------------------------------------------------------------------------------------- LAION head


def test_head_is_the_linear_layer(tiny_dir):
    path = weight_path(tiny_dir, "aesthetic_head")
    state = torch.load(path, weights_only=True)
    assert {key: tuple(value.shape) for key, value in state.items()} == {"weight": (1, 32), "bias": (1,)}
    features = F.normalize(torch.randn(5, 32, generator=torch.Generator().manual_seed(2)), dim=-1)
    expected = features.double() @ state["weight"].double().T + state["bias"].double()
    torch.testing.assert_close(load_aesthetic_head(path, device=CPU)(features), expected[:, 0].float())


def test_head_refuses_other_files(tiny_dir, tmp_path):
    save_aesthetic_head(tmp_path / "v2.pth", 32)
    with pytest.raises(CheckpointError, match="improved predictor v2"):
        load_aesthetic_head(tmp_path / "v2.pth", device=CPU)
    torch.save({"weight": torch.zeros(2, 32), "bias": torch.zeros(2)}, tmp_path / "two.pth")
    with pytest.raises(CheckpointError, match=r"found weight \[2, 32\] and bias \[2\]"):
        load_aesthetic_head(tmp_path / "two.pth", device=CPU)
    with pytest.raises(CheckpointError, match="expected exactly the keys weight and bias"):
        load_aesthetic_head(weight_path(tiny_dir, "dino"), device=CPU)


# ------------------------------------------------------------------------ load_extractors (after merge)


def test_load_extractors_loads_what_the_dimensions_need(tiny_dir):
    pytest.importorskip("benchmarks.vbench.metrics")
    from benchmarks.vbench.weights import load_extractors

    extractors = load_extractors(tiny_dir, ["subject_consistency", "aesthetic_quality"], device="cpu")
    assert extractors.dino is not None and extractors.clip_l14 is not None and extractors.aesthetic_head is not None
    assert extractors.clip_b32 is None and extractors.musiq is None and extractors.raft is None
    features = extractors.clip_l14(torch.zeros(1, 3, 224, 224))
    assert extractors.aesthetic_head(F.normalize(features, dim=-1)).shape == (1,)
    with pytest.raises(ConfigError, match="dtype must name"):
        load_extractors(tiny_dir, ["subject_consistency"], device="cpu", dtype="int8")
    with pytest.raises(ConfigError, match="pyiqa_model/musiq_spaq_ckpt-358bb6af.pth"):
        load_extractors(tiny_dir, ["imaging_quality"], device="cpu")


def test_head_and_l14_of_different_sizes_are_refused(tiny_dir, tmp_path):
    pytest.importorskip("benchmarks.vbench.metrics")
    from benchmarks.vbench.weights import load_extractors

    for field in ("clip_l14", "aesthetic_head"):
        target = weight_path(tmp_path, field)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(weight_path(tiny_dir, field).read_bytes())
    torch.save({"weight": torch.zeros(1, 768), "bias": torch.zeros(1)}, weight_path(tmp_path, "aesthetic_head"))
    with pytest.raises(CheckpointError, match="takes 768-d features but .* gives 32-d"):
        load_extractors(tmp_path, ["aesthetic_quality"], device="cpu")


def test_write_random_weights_writes_the_whole_layout(tmp_path):
    pytest.importorskip("benchmarks.vbench.musiq")
    pytest.importorskip("benchmarks.vbench.raft")
    from benchmarks.vbench.weights import write_random_weights

    write_random_weights(tmp_path, size="tiny")
    assert require_weight_files(tmp_path, list(WEIGHT_FILES)).keys() == WEIGHT_FILES.keys()
