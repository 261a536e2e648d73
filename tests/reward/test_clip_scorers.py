"""The CLIP-family frame-wise scorers: each loads a tiny random-weight checkpoint in its upstream layout through
the registry, scores a real mp4 like the same frames in memory, and equals a computation written here from the
published definitions (per-frame scores over the frames load_video samples, averaged) to 1e-5."""

from __future__ import annotations

import math
import os
from pathlib import Path

import decord
import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import InterpolationMode
from torchvision.transforms.functional import resize
from transformers import CLIPModel, CLIPProcessor

from reward import RewardModel, build_reward
from reward.clip_encoders import letterbox
from reward.clip_scorers import clipscore, frame_spec
from reward.errors import CheckpointError, ConfigError
from reward.tiny_clip import TINY_CLIP, aesthetic_head_state, save_aesthetic_head, save_hf_clip, save_open_clip_checkpoint
from reward.video import VideoFrames, load_video

from .helpers import small_clip, truncated_clip

PROMPTS = ["a red square moving left", "a cat on a sofa, photographed at night; a very long prompt " * 8]
SCORERS = ["clip_score", "clip_score_cosine", "pickscore", "hpsv2", "aesthetic"]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("clip-scorers")
    weights, config = save_open_clip_checkpoint(root / "hps" / "HPS_v2.1_compressed.pt")
    return {
        "clip": save_hf_clip(root / "clip"),
        "hps": weights,
        "hps_config": config,
        "head": save_aesthetic_head(root / "head" / "aesthetic-model.pth", TINY_CLIP.projection_dim),
        "video_a": small_clip(root / "a.mp4", frames=8, fps=4.0, seed=0),
        "video_b": small_clip(root / "b.mp4", frames=16, fps=4.0, seed=1),
    }


def entry(scorer: str, files: dict[str, Path], **options) -> dict:
    """The YAML-like registry entry of each scorer over the tiny checkpoints."""
    clip = str(files["clip"])
    entries = {
        "clip_score": {"name": "clip_score", "path": clip},
        "clip_score_cosine": {"name": "clip_score", "path": clip, "formula": "cosine"},
        "pickscore": {"name": "pickscore", "path": clip, "processor_path": None, "scale": 1 / 26},
        "hpsv2": {"name": "hpsv2", "path": str(files["hps"]), "architecture": str(files["hps_config"])},
        "aesthetic": {"name": "aesthetic", "path": clip, "head": str(files["head"])},
    }
    return {**entries[scorer], "device": "cpu", **options}


def sampled_frames(video: Path) -> torch.Tensor:
    """uint8 frames as the scorers' default VideoSpec samples them."""
    return load_video(video, frame_spec()).frames.to(torch.uint8)


def hf_expected(scorer: str, files: dict[str, Path], videos: list[Path]) -> list[float]:
    """Per-video mean of per-frame scores through transformers' CLIP, written from the definitions."""
    model = CLIPModel.from_pretrained(files["clip"]).eval()
    processor = CLIPProcessor.from_pretrained(files["clip"])
    head = torch.load(files["head"], weights_only=True)
    expected = []
    with torch.no_grad():
        for video, prompt in zip(videos, PROMPTS):
            pixels = processor(images=list(sampled_frames(video)), return_tensors="pt")["pixel_values"]
            image = F.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
            tokens = processor(text=[prompt], return_tensors="pt", truncation=True, max_length=77)
            text = F.normalize(model.get_text_features(**tokens).pooler_output, dim=-1)
            cos = image @ text[0]
            if scorer == "clip_score":
                frames = 2.5 * torch.clamp(cos, min=0)
            elif scorer == "clip_score_cosine":
                frames = cos
            elif scorer == "pickscore":
                frames = model.logit_scale.exp() * cos / 26
            else:  # aesthetic: the five affine layers in sequence, no activations
                frames = image
                for layer in (0, 2, 4, 6, 7):
                    frames = frames @ head[f"layers.{layer}.weight"].T + head[f"layers.{layer}.bias"]
                frames = frames[:, 0]
            expected.append(float(frames.mean()))
    return expected


def hpsv2_expected(files: dict[str, Path], videos: list[Path]) -> list[float]:
    """HPSv2 through open_clip's own factory and loader (the config registered with open_clip) on frames
    letterboxed by hand: the tiny clips are square, so that is a resize to the model's input size."""
    import open_clip
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    open_clip.add_model_config(files["hps_config"])
    name = files["hps_config"].stem
    model = open_clip.create_model(name, pretrained=str(files["hps"])).eval()
    tokenizer = open_clip.get_tokenizer(name)
    size = TINY_CLIP.image_size
    mean, std = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1), torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)
    expected = []
    with torch.no_grad():
        for video, prompt in zip(videos, PROMPTS):
            frames = sampled_frames(video).float() / 255
            assert frames.shape[-1] == frames.shape[-2]
            pixels = (resize(frames, [size, size], interpolation=InterpolationMode.BICUBIC, antialias=True) - mean) / std
            image = model.encode_image(pixels, normalize=True)
            text = model.encode_text(tokenizer([prompt]), normalize=True)
            expected.append(float((image @ text[0]).mean()))
    return expected


@pytest.mark.parametrize("scorer", SCORERS)
def test_scores_equal_an_independent_computation(files, scorer):
    """Two videos with different frame counts in one batch: each gets its own prompt's per-frame mean."""
    videos = [files["video_a"], files["video_b"]]
    model = build_reward(entry(scorer, files, batch_size=2))
    assert isinstance(model, RewardModel) and model.name == entry(scorer, files)["name"]
    output = model.score(videos, PROMPTS)
    expected = hpsv2_expected(files, videos) if scorer == "hpsv2" else hf_expected(scorer, files, videos)
    torch.testing.assert_close(output.rewards, torch.tensor(expected), rtol=0, atol=1e-5)
    for item in output.items:
        assert item.ok and item.sub_scores["frame_min"] <= item.reward <= item.sub_scores["frame_max"]
    assert len(sampled_frames(files["video_a"])) == 4 and len(sampled_frames(files["video_b"])) == 8


@pytest.mark.parametrize("scorer", SCORERS)
def test_file_and_in_memory_frames_score_identically(files, scorer):
    reader = decord.VideoReader(str(files["video_b"]))
    frames = reader.get_batch(list(range(len(reader)))).asnumpy()
    model = build_reward(entry(scorer, files, batch_size=1))
    from_file = model.score([files["video_b"]], PROMPTS[:1])
    from_memory = model.score([VideoFrames(frames, fps=reader.get_avg_fps())], PROMPTS[:1])
    assert torch.equal(from_file.rewards, from_memory.rewards)
    assert from_file.items[0].sub_scores == from_memory.items[0].sub_scores


def test_clipscore_is_two_and_a_half_times_the_positive_part_of_the_cosine():
    images = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    texts = torch.tensor([[-1.0, 0.0], [1.0, 0.0], [0.6, 0.8]])
    assert torch.equal(clipscore(images, texts), torch.tensor([0.0, 1.5, 2.0]))


def test_letterbox_scales_the_long_side_and_pads_black_centred():
    wide = torch.rand(1, 3, 2, 4)
    boxed = letterbox(wide, 4)  # no resize: one black row above, one below
    assert torch.equal(boxed[:, :, 1:3], wide) and boxed[:, :, [0, 3]].abs().sum() == 0
    flat = torch.rand(1, 3, 1, 4)  # odd margin: the extra row goes to the bottom
    assert torch.equal(letterbox(flat, 4)[:, :, 1], flat[:, :, 0]) and letterbox(flat, 4)[:, :, [0, 2, 3]].abs().sum() == 0
    tall = torch.rand(2, 3, 8, 4)
    shrunk = resize(tall, [4, 2], interpolation=InterpolationMode.BICUBIC, antialias=True)
    boxed = letterbox(tall, 4)
    assert torch.equal(boxed[..., 1:3], shrunk) and boxed[..., [0, 3]].abs().sum() == 0


def test_weights_found_in_a_folder_and_as_safetensors_score_the_same(files, tmp_path):
    from safetensors.torch import save_file

    save_file(aesthetic_head_state(TINY_CLIP.projection_dim), str(tmp_path / "head.safetensors"))
    as_pth = build_reward(entry("aesthetic", files)).score([files["video_a"]], PROMPTS[:1]).rewards
    as_safetensors = build_reward(entry("aesthetic", files, head=str(tmp_path / "head.safetensors")))
    in_folder = build_reward(entry("aesthetic", files, head=str(files["head"].parent)))  # default head_file
    assert torch.equal(as_safetensors.score([files["video_a"]], PROMPTS[:1]).rewards, as_pth)
    assert torch.equal(in_folder.score([files["video_a"]], PROMPTS[:1]).rewards, as_pth)
    hps_folder = build_reward(entry("hpsv2", files, path=str(files["hps"].parent)))  # default weights_file
    hps_file = build_reward(entry("hpsv2", files))
    assert torch.equal(hps_folder.score([files["video_a"]], PROMPTS[:1]).rewards,
                       hps_file.score([files["video_a"]], PROMPTS[:1]).rewards)


def test_missing_weights_are_named(files, tmp_path):
    with pytest.raises(ConfigError, match="nope.pth does not exist"):
        build_reward(entry("aesthetic", files, head=str(tmp_path / "nope.pth")))
    with pytest.raises(CheckpointError, match="has no HPS_v2.1_compressed.pt; name the weights file in it with weights_file"):
        build_reward(entry("hpsv2", files, path=str(tmp_path)))
    with pytest.raises(ConfigError, match="empty-folder does not exist"):
        build_reward(entry("clip_score", files, path=str(tmp_path / "empty-folder")))


class _Planted:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def test_a_planted_pickle_is_refused_without_running_it(files, tmp_path):
    marker = tmp_path / "the-pickle-ran"
    state = {**aesthetic_head_state(TINY_CLIP.projection_dim), "payload": _Planted(marker)}
    torch.save(state, tmp_path / "planted.pth")
    with pytest.raises(CheckpointError, match="planted.pth: refused"):
        build_reward(entry("aesthetic", files, head=str(tmp_path / "planted.pth")))
    assert not marker.exists()


def test_mlp_and_open_clip_weights_that_do_not_fit_name_the_keys(files, tmp_path):
    wrong_width = save_aesthetic_head(tmp_path / "l14.pth", 768)  # ViT-L/14's width on a 16-d tiny backbone
    with pytest.raises(CheckpointError, match=r"layers\.0\.weight: file \(1024, 768\), model \(1024, 16\)"):
        build_reward(entry("aesthetic", files, head=str(wrong_width)))
    state = aesthetic_head_state(TINY_CLIP.projection_dim)
    del state["layers.7.bias"]
    torch.save({**state, "layers.8.weight": torch.zeros(1)}, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match=r"missing keys \['layers\.7\.bias'\], unexpected keys \['layers\.8\.weight'\]"):
        build_reward(entry("aesthetic", files, head=str(tmp_path / "partial.pth")))
    hps = torch.load(files["hps"], weights_only=True)["state_dict"]
    del hps["text_projection"]
    torch.save({"state_dict": hps}, tmp_path / "hps.pt")
    with pytest.raises(CheckpointError, match=r"missing keys \['text_projection'\]"):
        build_reward(entry("hpsv2", files, path=str(tmp_path / "hps.pt")))


def test_bad_options_are_refused(files):
    with pytest.raises(ConfigError, match=r"formula must be one of \['clipscore', 'cosine'\], got 'hessel'"):
        build_reward(entry("clip_score", files, formula="hessel"))
    with pytest.raises(ConfigError, match=r"does not take options \['scale'\]"):
        build_reward(entry("clip_score", files, scale=2.0))
    with pytest.raises(ConfigError, match="architecture 'ViT-Q-99' is neither"):
        build_reward(entry("hpsv2", files, architecture="ViT-Q-99"))
    with pytest.raises(ConfigError, match="dtype must name a floating-point torch dtype"):
        build_reward(entry("pickscore", files, dtype="int8"))


def test_frame_sampling_follows_the_fps_and_max_frames_options(files):
    model = build_reward(entry("clip_score", files, fps=4.0, max_frames=6))
    assert (model.spec.fps, model.spec.min_frames, model.spec.max_frames) == (4.0, 4, 6)
    assert len(load_video(files["video_b"], model.spec).frames) == 6  # 16 frames at 4 fps, capped at 6
    with pytest.raises(ConfigError, match="fps / max_frames"):
        build_reward(entry("clip_score", files, max_frames=1))


def test_unreadable_video_raises_or_is_reported(files, tmp_path):
    broken = truncated_clip(tmp_path / "broken.mp4")
    with pytest.raises(ValueError, match="broken.mp4"):
        build_reward(entry("clip_score", files)).score([files["video_a"], broken], PROMPTS)
    output = build_reward(entry("clip_score", files, skip_invalid=True)).score([files["video_a"], broken], PROMPTS)
    assert output.items[0].ok and math.isnan(output.rewards[1]) and "broken.mp4" in output.items[1].error
