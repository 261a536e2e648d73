"""RAFT-large for dynamic_degree (benchmarks/vbench/raft.py): raft-things.pth's layout, the conversion to
torchvision's names, VBench's padding and input range. Real-weight accuracy cannot be checked offline (no
weights here); the flows below come from random weights and are compared with torchvision's model, not with
ground truth."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from benchmarks.vbench.raft import (
    RAFT_PARAMETERS, RaftFlow, build_raft_large, load_raft, padding_to_multiple_of_8, princeton_to_torchvision,
    torchvision_to_princeton, write_random_raft,
)
from reward.errors import CheckpointError, ConfigError


def princeton_layout() -> dict[str, tuple[int, ...]]:
    """Every tensor of princeton-vl's ``RAFT(small=False).state_dict()`` with its shape, written out from the
    module tree of its ``core/extractor.py`` (BasicEncoder) and ``core/update.py`` (BasicUpdateBlock): two
    encoders 3 -> 64 (7x7/2) -> layers of two residual blocks (64, 96/2, 128/2) -> 1x1 to 256, the feature one
    with parameter-free instance norms, the context one with BatchNorms (weight, bias, running_mean,
    running_var, num_batches_tracked), where a strided block's shortcut norm is registered twice (norm3 and
    downsample.1); then the motion encoder, the separable ConvGRU, the flow head and the upsampling mask."""
    layout: dict[str, tuple[int, ...]] = {}

    def conv(name: str, out: int, inp: int, kernel: tuple[int, int]) -> None:
        layout[f"{name}.weight"], layout[f"{name}.bias"] = (out, inp, *kernel), (out,)

    def norm(name: str, width: int, batch: bool) -> None:
        if batch:
            layout.update({f"{name}.{leaf}": (width,) for leaf in ("weight", "bias", "running_mean", "running_var")})
            layout[f"{name}.num_batches_tracked"] = ()

    for encoder, batch in (("fnet", False), ("cnet", True)):
        conv(f"{encoder}.conv1", 64, 3, (7, 7))
        norm(f"{encoder}.norm1", 64, batch)
        for layer, (inp, width) in {1: (64, 64), 2: (64, 96), 3: (96, 128)}.items():
            for index in (0, 1):
                block = f"{encoder}.layer{layer}.{index}"
                conv(f"{block}.conv1", width, inp if index == 0 else width, (3, 3))
                conv(f"{block}.conv2", width, width, (3, 3))
                norm(f"{block}.norm1", width, batch)
                norm(f"{block}.norm2", width, batch)
                if layer > 1 and index == 0:
                    norm(f"{block}.norm3", width, batch)
                    conv(f"{block}.downsample.0", width, inp, (1, 1))
                    norm(f"{block}.downsample.1", width, batch)
        conv(f"{encoder}.conv2", 256, 128, (1, 1))
    update = "update_block"
    conv(f"{update}.encoder.convc1", 256, 4 * 9 * 9, (1, 1))  # 4 pyramid levels x (2 * radius 4 + 1)^2
    conv(f"{update}.encoder.convc2", 192, 256, (3, 3))
    conv(f"{update}.encoder.convf1", 128, 2, (7, 7))
    conv(f"{update}.encoder.convf2", 64, 128, (3, 3))
    conv(f"{update}.encoder.conv", 126, 256, (3, 3))
    for gate in "zrq":
        conv(f"{update}.gru.conv{gate}1", 128, 384, (1, 5))
        conv(f"{update}.gru.conv{gate}2", 128, 384, (5, 1))
    conv(f"{update}.flow_head.conv1", 256, 128, (3, 3))
    conv(f"{update}.flow_head.conv2", 2, 256, (3, 3))
    conv(f"{update}.mask.0", 256, 128, (3, 3))
    conv(f"{update}.mask.2", 576, 256, (1, 1))
    return layout


@pytest.fixture(scope="module")
def raft_file(tmp_path_factory):
    return write_random_raft(tmp_path_factory.mktemp("raft_model") / "raft-things.pth", seed=3)


@pytest.fixture(scope="module")
def raft(raft_file) -> RaftFlow:
    return load_raft(raft_file)


def frame_pair(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth random frame in 0..255 and the same frame shifted 3 px right and 2 px down."""
    generator = torch.Generator().manual_seed(height * width)
    frame = F.interpolate(torch.rand(1, 3, height // 8, width // 8, generator=generator), (height, width), mode="bilinear")
    return 255 * frame, 255 * torch.roll(frame, shifts=(2, 3), dims=(2, 3))


def test_random_file_has_the_released_layout(raft_file):
    """179 tensors with ``module.`` prefixes; 5,257,536 parameters once running statistics, counters and the
    norm3 copies are left out (torchvision's count for the same network)."""
    state = torch.load(raft_file, weights_only=True)
    assert all(key.startswith("module.") for key in state)
    shapes = {key.removeprefix("module."): tuple(value.shape) for key, value in state.items()}
    assert shapes == princeton_layout() and len(shapes) == 179
    for block in ("cnet.layer2.0", "cnet.layer3.0"):
        assert torch.equal(state[f"module.{block}.norm3.weight"], state[f"module.{block}.downsample.1.weight"])
    parameters = sum(math.prod(shape) for key, shape in shapes.items()
                     if ".norm3." not in key and not key.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert parameters == RAFT_PARAMETERS
    assert write_random_raft(raft_file.parent / "tiny.pth", "tiny", seed=3).read_bytes() == raft_file.read_bytes()


# One pair per renaming rule, read off the two module trees (princeton core/*.py, torchvision raft.py).
RENAMED = {
    "fnet.conv1.weight": "feature_encoder.convnormrelu.0.weight",
    "cnet.norm1.running_mean": "context_encoder.convnormrelu.1.running_mean",
    "cnet.layer1.1.conv2.bias": "context_encoder.layer1.1.convnormrelu2.0.bias",
    "cnet.layer2.0.norm1.weight": "context_encoder.layer2.0.convnormrelu1.1.weight",
    "cnet.layer3.0.norm2.bias": "context_encoder.layer3.0.convnormrelu2.1.bias",
    "fnet.layer3.0.downsample.0.weight": "feature_encoder.layer3.0.downsample.0.weight",
    "cnet.layer2.0.downsample.1.running_var": "context_encoder.layer2.0.downsample.1.running_var",
    "fnet.conv2.weight": "feature_encoder.conv.weight",
    "update_block.encoder.convc1.weight": "update_block.motion_encoder.convcorr1.0.weight",
    "update_block.encoder.convc2.weight": "update_block.motion_encoder.convcorr2.0.weight",
    "update_block.encoder.convf1.weight": "update_block.motion_encoder.convflow1.0.weight",
    "update_block.encoder.convf2.weight": "update_block.motion_encoder.convflow2.0.weight",
    "update_block.encoder.conv.bias": "update_block.motion_encoder.conv.0.bias",
    "update_block.gru.convz1.weight": "update_block.recurrent_block.convgru1.convz.weight",
    "update_block.gru.convr1.weight": "update_block.recurrent_block.convgru1.convr.weight",
    "update_block.gru.convq1.weight": "update_block.recurrent_block.convgru1.convq.weight",
    "update_block.gru.convz2.weight": "update_block.recurrent_block.convgru2.convz.weight",
    "update_block.gru.convr2.weight": "update_block.recurrent_block.convgru2.convr.weight",
    "update_block.gru.convq2.weight": "update_block.recurrent_block.convgru2.convq.weight",
    "update_block.flow_head.conv1.weight": "update_block.flow_head.conv1.weight",
    "update_block.flow_head.conv2.bias": "update_block.flow_head.conv2.bias",
    "update_block.mask.0.weight": "mask_predictor.convrelu.0.weight",
    "update_block.mask.2.bias": "mask_predictor.conv.bias",
}


def test_conversion_maps_every_tensor_both_ways(raft_file):
    state = torch.load(raft_file, weights_only=True)
    converted = princeton_to_torchvision(state, raft_file)
    assert set(converted) == set(build_raft_large().state_dict())
    assert all(converted[new] is state[f"module.{old}"] for old, new in RENAMED.items())
    assert torchvision_to_princeton(converted).keys() == state.keys()
    unprefixed = {key.removeprefix("module."): value for key, value in state.items()}
    assert princeton_to_torchvision(unprefixed, "plain").keys() == converted.keys()  # VBench strips the prefix too


def test_flow_equals_torchvision_raft_loaded_with_the_converted_weights(raft_file, raft):
    """The estimator = raft_large with the converted state dict, fed 2 * (x / 255) - 1 (RAFT's own input
    scaling), last of the refinement steps. Two steps keep the test short; VBench's 20 are tested below."""
    model = build_raft_large().eval()
    model.load_state_dict(princeton_to_torchvision(torch.load(raft_file, weights_only=True), raft_file))
    first, second = frame_pair(128, 128)
    with torch.no_grad():
        expected = model(2 * (first / 255) - 1, 2 * (second / 255) - 1, num_flow_updates=2)[-1]
    flow = RaftFlow(raft.model, raft.device, iterations=2)(first, second)
    assert flow.shape == (1, 2, 128, 128)
    torch.testing.assert_close(flow, expected, rtol=0, atol=1e-5)
    assert flow.abs().mean() > 0.1


def test_padding_is_split_like_raft_input_padder():
    """130 rows need 6 more (3 above, 3 below), 150 columns 2 (1, 1), 121 rows 7 (3 above, 4 below)."""
    assert padding_to_multiple_of_8(130, 150) == (1, 1, 3, 3)
    assert padding_to_multiple_of_8(121, 128) == (0, 0, 3, 4)
    assert padding_to_multiple_of_8(480, 832) == (0, 0, 0, 0)


def test_padded_frames_give_a_flow_of_the_original_size(raft):
    short = RaftFlow(raft.model, raft.device, iterations=2)
    first, second = frame_pair(130, 150)
    padded = short(first, second, keep_padding=True)
    assert padded.shape == (1, 2, 136, 152)
    expected = short.model(*(F.pad(2 * (frame / 255) - 1, (1, 1, 3, 3), mode="replicate") for frame in (first, second)),
                           num_flow_updates=2)[-1]
    torch.testing.assert_close(padded, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(short(first, second), padded[..., 3:133, 1:151], rtol=0, atol=1e-5)


def test_identical_frames_with_vbench_iterations(raft):
    frame, _ = frame_pair(128, 136)
    assert raft.iterations == 20
    flow = raft(frame, frame.clone())
    assert flow.shape == (1, 2, 128, 136) and torch.isfinite(flow).all()


def test_bad_files_and_frames_are_rejected(raft_file, raft, tmp_path):
    state = torch.load(raft_file, weights_only=True)
    torch.save({**state, "module.fnet.layer4.0.conv1.weight": torch.zeros(1)}, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match=r"1 tensors are not part of .*\['fnet\.layer4\.0\.conv1\.weight'\]"):
        load_raft(tmp_path / "extra.pth")
    partial = {key: value for key, value in state.items() if "flow_head.conv2" not in key}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match=r"missing keys \['update_block\.flow_head\.conv2\.bias'"):
        load_raft(tmp_path / "partial.pth")
    torch.save({**state, "module.cnet.layer3.0.norm3.bias": torch.ones(128)}, tmp_path / "twin.pth")
    with pytest.raises(CheckpointError, match=r"cnet\.layer3\.0\.norm3\.bias differs"):
        load_raft(tmp_path / "twin.pth")
    torch.save({"conv_root.weight": torch.zeros(64, 3, 7, 7)}, tmp_path / "musiq.pth")
    with pytest.raises(CheckpointError, match=r"musiq\.pth: 1 tensors are not part of princeton-vl RAFT-large"):
        load_raft(tmp_path / "musiq.pth")
    counters = [key for key in state if key.endswith("num_batches_tracked")]
    torch.save({key: value for key, value in state.items() if key not in counters}, tmp_path / "old.pth")
    assert counters and isinstance(load_raft(tmp_path / "old.pth"), RaftFlow)
    with pytest.raises(ValueError, match="at least 128x128 pixels, got 96x200"):
        raft(torch.zeros(1, 3, 96, 200), torch.zeros(1, 3, 96, 200))
    with pytest.raises(ValueError, match=r"two \(1, 3, H, W\) frames of one size"):
        raft(torch.zeros(1, 3, 128, 128), torch.zeros(1, 3, 128, 136))
    with pytest.raises(ConfigError, match="unknown RAFT size 'small'"):
        write_random_raft(tmp_path / "x.pth", "small")
