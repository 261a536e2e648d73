"""MUSIQ for imaging_quality (benchmarks/vbench/musiq.py): pyiqa's checkpoint layout, the multi-scale patching on
hand-checkable shapes, strict loading. Real-weight accuracy cannot be checked offline (no weights here)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from benchmarks.vbench.musiq import (
    REAL_MUSIQ, TINY_MUSIQ, Attention, MultiScalePatches, StandardizedConv2d, cut_patches, hashed_positions, load_musiq, multiscale_patches,
    musiq_size_of, resize_longer_side, write_random_musiq,
)
from reward.errors import CheckpointError, ConfigError


def pyiqa_layout(hidden: int, layers: int, mlp: int, patch: int = 32, grid: int = 10) -> dict[str, tuple[int, ...]]:
    """Every tensor of pyiqa's ``MUSIQ(num_class=1)`` state dict with its shape, written out from the module tree
    of ``pyiqa/archs/musiq_arch.py``: a ResNet stem (weight-standardised convs without bias, GroupNorms), the
    token embedding, the transformer encoder (hashed position table, 3 scale embeddings, CLS, final norm, blocks
    with q/k/v/out projections and a two-layer MLP) and the one-output head."""
    layout = {"conv_root.weight": (64, 3, 7, 7), "gn_root.weight": (64,), "gn_root.bias": (64,)}
    for conv, shape in {"conv1": (64, 64, 1, 1), "conv2": (64, 64, 3, 3), "conv3": (256, 64, 1, 1),
                        "conv_proj": (256, 64, 1, 1)}.items():
        layout[f"block1.{conv}.weight"] = shape
    for norm, width in {"gn1": 64, "gn2": 64, "gn3": 256, "gn_proj": 256}.items():
        layout[f"block1.{norm}.weight"] = layout[f"block1.{norm}.bias"] = (width,)
    layout["embedding.weight"], layout["embedding.bias"] = (hidden, 256 * (patch // 4) ** 2), (hidden,)
    encoder = "transformer_encoder"
    layout.update({f"{encoder}.posembed_input.position_emb": (1, grid * grid, hidden),
                   f"{encoder}.scaleembed_input.scale_emb": (3, hidden), f"{encoder}.cls": (1, 1, hidden),
                   f"{encoder}.encoder_norm.weight": (hidden,), f"{encoder}.encoder_norm.bias": (hidden,)})
    for index in range(layers):
        block = f"{encoder}.transformer.encoderblock_{index}"
        for linear, (out, inp) in {"attention.query": (hidden, hidden), "attention.key": (hidden, hidden),
                                   "attention.value": (hidden, hidden), "attention.out": (hidden, hidden),
                                   "mlp.fc1": (mlp, hidden), "mlp.fc2": (hidden, mlp)}.items():
            layout[f"{block}.{linear}.weight"], layout[f"{block}.{linear}.bias"] = (out, inp), (out,)
        for norm in ("norm1", "norm2"):
            layout[f"{block}.{norm}.weight"] = layout[f"{block}.{norm}.bias"] = (hidden,)
    layout["head.weight"], layout["head.bias"] = (1, hidden), (1,)
    return layout


@pytest.fixture(scope="module")
def tiny_musiq_file(tmp_path_factory):
    return write_random_musiq(tmp_path_factory.mktemp("pyiqa_model") / "musiq_spaq_ckpt-358bb6af.pth", "tiny")


def shapes(path) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in torch.load(path, weights_only=True).items()}


def test_tiny_file_has_pyiqa_layout_and_loads_with_its_sizes(tiny_musiq_file):
    assert shapes(tiny_musiq_file) == pyiqa_layout(hidden=128, layers=2, mlp=256)
    model = load_musiq(tiny_musiq_file)
    assert model.size == TINY_MUSIQ and not model.training
    assert not any(parameter.requires_grad for parameter in model.parameters())


def test_real_size_file_is_the_spaq_checkpoint_layout(tmp_path):
    """27,125,825 parameters: stem 9,408 + 128 (root) + 75,008 (bottleneck); embedding 16,384 * 384 + 384 =
    6,291,840; embeddings 38,400 + 1,152 + 384 + 768 (final norm); 14 blocks of 1,479,168 (2 norms 1,536, four
    384x384 projections 591,360, MLP 886,272) = 20,708,352; head 385."""
    path = write_random_musiq(tmp_path / "musiq.pth", "real", seed=1)
    assert shapes(path) == pyiqa_layout(hidden=384, layers=14, mlp=1152)
    model = load_musiq(path)
    assert model.size == REAL_MUSIQ and model.size.heads == 6
    assert sum(parameter.numel() for parameter in model.parameters()) == 27_125_825


def test_patch_counts_per_scale_for_a_480x832_frame():
    """Longer side 224: 129x224 (480 * 224 / 832 = 129.2) -> 5 x 7 = 35 patches, padded to 7^2 = 49; longer side
    384: 222x384 (221.5 rounds up) -> 7 x 12 = 84 of 144; native 480x832 -> 15 x 26 = 390. 583 tokens in all."""
    image = torch.rand(1, 3, 480, 832)
    assert resize_longer_side(image, 224).shape[-2:] == (129, 224)
    assert resize_longer_side(image, 384).shape[-2:] == (222, 384)
    sequence = multiscale_patches(image)
    assert sequence.pixels.shape == (1, 583, 3 * 32 * 32)
    for scale, (start, stop, valid) in enumerate([(0, 49, 35), (49, 193, 84), (193, 583, 390)]):
        assert sequence.valid[0, start:stop].sum() == valid and sequence.valid[0, start:stop][:valid].all()
        assert (sequence.scales[0, start:start + valid] == scale).all()
        assert (sequence.pixels[0, start + valid:stop] == 0).all()  # the padding tokens are empty
    # the first native patch is the top-left 32x32 block: 480 and 832 are multiples of 32, no padding
    assert torch.equal(sequence.pixels[0, 193].view(3, 32, 32), image[0, :, :32, :32])


def test_patches_are_cut_with_tensorflow_same_padding():
    """40x72 with patch 32: 2 x 3 patches over 64x96, so 24 rows (12 above, 12 below) and 24 columns (12 left, 12
    right) of zeros; the odd case 41 rows pads 11 above and 12 below."""
    image = torch.arange(3 * 40 * 72, dtype=torch.float32).view(1, 3, 40, 72) + 1
    patches = cut_patches(image, 32)
    assert patches.shape == (1, 6, 3 * 32 * 32)
    first = patches[0, 0].view(3, 32, 32)
    assert torch.equal(first[:, 12:, 12:], image[0, :, :20, :20]) and first[:, :12].eq(0).all() and first[:, :, :12].eq(0).all()
    last = patches[0, 5].view(3, 32, 32)
    assert torch.equal(last[:, :20, :20], image[0, :, 20:, 52:]) and last[:, 20:].eq(0).all()
    odd = cut_patches(torch.ones(1, 3, 41, 32), 32)[0, 0].view(3, 32, 32)
    assert odd[0, :, 0].tolist() == [0.0] * 11 + [1.0] * 21


def test_hashed_positions_spread_a_layout_over_the_grid():
    """Cell of patch i among n along an axis = floor(i * 10 / n); the index is row_cell * 10 + col_cell. (torch's
    float32 nearest rule, which pyiqa uses, first departs from the integer formula at n = 82.)"""
    assert hashed_positions(10, 2, 3).tolist() == [0, 3, 6, 50, 53, 56]
    for count in range(1, 82):
        cells = [index * 10 // count for index in range(count)]
        assert hashed_positions(10, 1, count).tolist() == cells
        assert hashed_positions(10, count, 1).tolist() == [10 * cell for cell in cells]


def test_score_is_a_finite_scalar_and_padding_tokens_are_ignored(tiny_musiq_file):
    model = load_musiq(tiny_musiq_file)
    image = torch.rand(1, 3, 48, 80, generator=torch.Generator().manual_seed(0))
    score = model(image)
    assert score.shape == (1,) and torch.isfinite(score).all()
    sequence = multiscale_patches((image - 0.5) * 2)
    assert not sequence.valid.all()
    assert torch.equal(model.score_sequence(sequence), score)
    kept = MultiScalePatches(*(field[:, sequence.valid[0]] for field in sequence))
    torch.testing.assert_close(model.score_sequence(kept), score, rtol=0, atol=1e-5)
    batch = torch.cat([image, image.flip(-1)])
    torch.testing.assert_close(model(batch), torch.cat([score, model(image.flip(-1))]), rtol=0, atol=1e-5)
    assert not torch.equal(model(batch)[0], model(batch)[1])


def test_attention_equals_torch_multihead_attention_on_the_valid_tokens():
    """Against ``nn.MultiheadAttention`` with the same projections (scaled dot product over 2 heads of 64): equal
    for every real token, and a padded key (masked) changes nothing for them."""
    torch.manual_seed(0)
    attention, reference = Attention(128, heads=2), nn.MultiheadAttention(128, 2, batch_first=True)
    with torch.no_grad():
        reference.in_proj_weight.copy_(torch.cat([attention.query.weight, attention.key.weight, attention.value.weight]))
        reference.in_proj_bias.copy_(torch.cat([attention.query.bias, attention.key.bias, attention.value.bias]))
        reference.out_proj.load_state_dict(attention.out.state_dict())
        tokens, valid = torch.randn(1, 7, 128), torch.tensor([[True] * 5 + [False] * 2])
        expected, _ = reference(tokens[:, :5], tokens[:, :5], tokens[:, :5])
        torch.testing.assert_close(attention(tokens, valid)[:, :5], expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(attention(tokens[:, :5], valid[:, :5]), expected, rtol=0, atol=1e-5)


def test_standardized_conv_ignores_the_filter_scale_and_keeps_same_size():
    """Each filter is standardised before use, so a * w + b (per filter, a > 0) convolves the same (up to the
    1e-5 added to the std); "SAME" padding gives ceil(32 / 2) = 16 outputs per side for the 7x7/2 root conv."""
    torch.manual_seed(0)
    conv, scaled = StandardizedConv2d(3, 64, 7, stride=2, bias=False), StandardizedConv2d(3, 64, 7, stride=2, bias=False)
    with torch.no_grad():
        scaled.weight.copy_(conv.weight * torch.rand(64, 1, 1, 1).add(0.5) + torch.randn(64, 1, 1, 1))
        patches = torch.randn(2, 3, 32, 32)
        assert conv(patches).shape == (2, 64, 16, 16)
        torch.testing.assert_close(scaled(patches), conv(patches), rtol=1e-3, atol=1e-3)


def test_module_prefix_is_accepted(tiny_musiq_file, tmp_path):
    state = torch.load(tiny_musiq_file, weights_only=True)
    torch.save({f"module.{key}": value for key, value in state.items()}, tmp_path / "wrapped.pth")
    image = torch.rand(1, 3, 40, 40)
    assert torch.equal(load_musiq(tmp_path / "wrapped.pth")(image), load_musiq(tiny_musiq_file)(image))


def test_wrong_files_are_rejected(tiny_musiq_file, tmp_path):
    state = torch.load(tiny_musiq_file, weights_only=True)
    torch.save({"fnet.conv1.weight": torch.zeros(64, 3, 7, 7)}, tmp_path / "raft.pth")
    with pytest.raises(CheckpointError, match=r"raft\.pth is not a MUSIQ checkpoint"):
        load_musiq(tmp_path / "raft.pth")
    ava = {**state, "head.weight": torch.zeros(10, 128), "head.bias": torch.zeros(10)}
    with pytest.raises(CheckpointError, match="head has 10 outputs"):
        musiq_size_of(ava, "ava.pth")
    partial = {key: value for key, value in state.items() if "encoderblock_1.mlp.fc2" not in key}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match=r"missing keys \[.*encoderblock_1\.mlp\.fc2\.bias"):
        load_musiq(tmp_path / "partial.pth")
    torch.save({**state, "extra.weight": torch.zeros(1)}, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match=r"unexpected keys \['extra\.weight'\]"):
        load_musiq(tmp_path / "extra.pth")
    torch.save({"weights": state, "note": object()}, tmp_path / "pickled.pth")
    with pytest.raises(CheckpointError, match="not a plain tensor file"):
        load_musiq(tmp_path / "pickled.pth")
    with pytest.raises(ConfigError, match="unknown MUSIQ size 'base'"):
        write_random_musiq(tmp_path / "x.pth", "base")
