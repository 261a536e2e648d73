"""CLIP dual encoders for the frame-wise scorers (:mod:`reward.clip_scorers`), and loading their weights.

Two implementations behind one small interface (:class:`FrameEncoder`): transformers' ``CLIPModel`` with its
``CLIPProcessor``, and open_clip's ``CLIP`` (imported only when one is loaded) with its BPE tokenizer and
HPSv2's letterbox preprocessing. Both return L2-normalised float32 embeddings. Weights load strictly: a
missing, unexpected or misshapen key is a :class:`reward.errors.CheckpointError`, and a ``.pt``/``.pth`` file
is read with ``torch.load(weights_only=True)`` only.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms.functional import resize

from .checkpoint import resolve_model_source
from .errors import CheckpointError, ConfigError
from .scoring import default_dtype

# The normalisation of every CLIP checkpoint used here (OpenAI's image statistics; HPSv2 keeps them).
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class FrameEncoder(Protocol):
    """A CLIP dual encoder: unit-norm float32 embeddings of frames and of prompts."""

    embed_dim: int

    def encode_images(self, videos: Sequence[torch.Tensor]) -> torch.Tensor:
        """uint8 ``(T_i, 3, H_i, W_i)`` frames of each video -> ``(sum T_i, D)``."""

    def encode_texts(self, prompts: Sequence[str]) -> torch.Tensor:
        """``B`` prompts -> ``(B, D)``."""


class HFClipEncoder:
    """A transformers ``CLIPModel`` with its ``CLIPProcessor``."""

    def __init__(self, model: nn.Module, processor: Any, device: torch.device) -> None:
        self.model, self.processor, self.device = model.to(device).eval(), processor, device
        self.embed_dim = model.config.projection_dim

    @torch.no_grad()
    def encode_images(self, videos: Sequence[torch.Tensor]) -> torch.Tensor:
        frames = [frame for video in videos for frame in video]
        # the processor's torchvision backend resizes and crops on the model's device
        pixels = self.processor.image_processor(images=frames, return_tensors="pt", device=self.device)["pixel_values"]
        features = self.model.get_image_features(pixel_values=pixels.to(self.device, self.model.dtype))
        return F.normalize(features.pooler_output.float(), dim=-1)

    @torch.no_grad()
    def encode_texts(self, prompts: Sequence[str]) -> torch.Tensor:
        tokens = self.processor.tokenizer(
            list(prompts), padding=True, truncation=True, return_tensors="pt",
            max_length=self.model.config.text_config.max_position_embeddings,
        ).to(self.device)
        return F.normalize(self.model.get_text_features(**tokens).pooler_output.float(), dim=-1)


class OpenClipEncoder:
    """An open_clip ``CLIP`` with its BPE tokenizer, images letterboxed as HPSv2 does."""

    def __init__(self, model: nn.Module, tokenizer: Callable, device: torch.device) -> None:
        self.model, self.tokenizer, self.device = model.to(device).eval(), tokenizer, device
        self.embed_dim = model.text_projection.shape[1]
        self.image_size = model.visual.image_size[0]  # open_clip's ViT configs are square

    @torch.no_grad()
    def encode_images(self, videos: Sequence[torch.Tensor]) -> torch.Tensor:
        pixels = torch.cat([letterbox(video.to(self.device).float() / 255.0, self.image_size) for video in videos])
        mean, std = (torch.tensor(values, device=self.device).view(1, 3, 1, 1) for values in (OPENAI_MEAN, OPENAI_STD))
        dtype = next(self.model.parameters()).dtype
        features = self.model.encode_image(((pixels - mean) / std).to(self.device, dtype))
        return F.normalize(features.float(), dim=-1)

    @torch.no_grad()
    def encode_texts(self, prompts: Sequence[str]) -> torch.Tensor:
        features = self.model.encode_text(self.tokenizer(list(prompts)).to(self.device))
        return F.normalize(features.float(), dim=-1)


def letterbox(images: torch.Tensor, size: int) -> torch.Tensor:
    """Fit ``(N, 3, H, W)`` images in [0, 1] into ``size`` x ``size``: scale the longer side to ``size``
    (bicubic, antialiased), then pad with black, centred (the extra pixel of an odd margin goes right/bottom).

    HPSv2's evaluation transform (``ResizeMaxSize`` in its ``hpsv2/src/open_clip/transform.py``). It skips a
    square pad when no resize is needed; we always pad, so a non-square frame whose long side is already
    ``size`` still becomes square.
    """
    height, width = images.shape[-2:]
    scale = size / max(height, width)
    if scale != 1.0:
        height, width = round(height * scale), round(width * scale)
        images = resize(images, [height, width], interpolation=InterpolationMode.BICUBIC, antialias=True)
    top, left = (size - height) // 2, (size - width) // 2
    return F.pad(images, (left, size - width - left, top, size - height - top))


def torch_dtype(value: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """A backbone dtype from an option (``"bfloat16"``, ``torch.float16``, ...); default bf16 on GPU, fp32 on CPU."""
    resolved = default_dtype(value, device)
    if isinstance(resolved, str):
        resolved = getattr(torch, resolved, None)
    if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
        raise ConfigError(f"dtype must name a floating-point torch dtype (e.g. bfloat16, float32), got {value!r}")
    return resolved


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file, or of a ``torch.save`` file read with ``weights_only=True`` (plain
    tensors and containers only: a file that holds other pickled objects is refused, never run). A
    ``{"state_dict": ...}`` wrapper, as in HPSv2's files, is unwrapped."""
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: Any = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            raise CheckpointError(
                f"{path}: refused: it is not a plain tensor file (pickled objects are never loaded); "
                "save its state dict with safetensors instead"
            ) from error
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise CheckpointError(f"{path}: not a state dict (a mapping of names to tensors)")
    return state


def check_keys(
    where: str | Path, missing: Sequence[str], unexpected: Sequence[str], wrong_shapes: Sequence[str] = ()
) -> None:
    """A checkpoint fits its model exactly or is refused: a missing weight would stay random."""
    if missing or unexpected or wrong_shapes:
        raise CheckpointError(
            f"{where}: missing keys {sorted(missing)[:20]}, unexpected keys {sorted(unexpected)[:20]}, "
            f"wrong shapes {list(wrong_shapes)[:20]}"
        )


def load_strictly(module: nn.Module, state: dict[str, torch.Tensor], where: str | Path) -> None:
    """Load ``state`` into ``module`` after checking names and shapes both ways (:func:`check_keys`)."""
    expected = module.state_dict()
    wrong = [f"{key}: file {tuple(value.shape)}, model {tuple(expected[key].shape)}"
             for key, value in state.items() if key in expected and value.shape != expected[key].shape]
    check_keys(where, sorted(set(expected) - set(state)), sorted(set(state) - set(expected)), wrong)
    module.load_state_dict(state)


def resolve_weights_file(path: str | Path, file_name: str, *, revision: str | None, file_option: str) -> Path:
    """A single weights file: ``path`` itself if it is a file, else ``file_name`` (the option ``file_option``)
    inside the folder or hub repository ``path`` (one ``hf_hub_download``; with ``HF_HUB_OFFLINE=1`` only the
    cache is read)."""
    from .run_record import looks_like_hub_id

    local = Path(path).expanduser()
    if local.is_file():
        return local
    if local.is_dir():
        if not (local / file_name).is_file():
            raise CheckpointError(f"{local} has no {file_name}; name the weights file in it with {file_option}")
        return local / file_name
    if not looks_like_hub_id(str(path)):
        raise ConfigError(f"{path} does not exist (and is not a hub id of the form owner/name)")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(str(path), file_name, revision=revision))
    except (LocalEntryNotFoundError, HfHubHTTPError) as error:
        raise CheckpointError(f"{file_name} of {path} is not in the hub cache and cannot be fetched: {error}") from error


def load_hf_clip(
    path: str | Path, *, revision: str | None, processor_path: str | Path | None, device: torch.device,
    dtype: torch.dtype,
) -> HFClipEncoder:
    """A transformers CLIP checkpoint (local folder or hub id) and its processor (from ``processor_path`` if
    given, else from the checkpoint)."""
    from transformers import CLIPModel, CLIPProcessor

    folder = resolve_model_source(path, revision=revision).folder
    try:
        model, info = CLIPModel.from_pretrained(folder, dtype=dtype, output_loading_info=True)
        processor = CLIPProcessor.from_pretrained(processor_path if processor_path is not None else folder)
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path}: not a transformers CLIP checkpoint with its processor ({error})") from error
    check_keys(path, info["missing_keys"], info["unexpected_keys"], [str(key) for key in info["mismatched_keys"]])
    return HFClipEncoder(model, processor, device)


def open_clip_architecture(architecture: str | Path) -> dict:
    """An open_clip model config: a built-in name (``ViT-H-14``) or a JSON file in open_clip's format."""
    import open_clip

    if str(architecture).endswith(".json"):
        if not Path(architecture).is_file():
            raise ConfigError(f"architecture file {architecture} does not exist")
        return json.loads(Path(architecture).read_text())
    config = open_clip.get_model_config(str(architecture))
    if config is None:
        raise ConfigError(f"architecture {architecture!r} is neither an open_clip model name nor a .json config file")
    return config


def load_open_clip(
    weights: Path, *, architecture: str | Path, device: torch.device, dtype: torch.dtype
) -> OpenClipEncoder:
    """An open_clip ``CLIP`` of ``architecture`` with the state dict in ``weights``, loaded strictly."""
    from open_clip.model import CLIP
    from open_clip.tokenizer import SimpleTokenizer

    config = open_clip_architecture(architecture)
    try:
        model = CLIP(**config)
    except TypeError as error:
        raise ConfigError(f"architecture {architecture}: not a plain open_clip CLIP config ({error})") from error
    load_strictly(model, read_state_dict(weights), weights)
    # open_clip's text config defaults to CLIP's 77 positions when it names none
    tokenizer = SimpleTokenizer(context_length=config["text_cfg"].get("context_length", 77))
    return OpenClipEncoder(model.to(dtype), tokenizer, device)
