"""Random-weight CLIP checkpoints in the layouts the CLIP-family scorers load (:mod:`reward.clip_scorers`).

Each builder takes the architecture's sizes (:class:`ClipSize`), so the same code writes a toy model for the
tests and a full-size one with random weights for a GPU throughput measurement:

- :func:`save_hf_clip`: a transformers ``CLIPModel`` folder (``config.json`` + ``model.safetensors``) with a CLIP
  tokenizer trained here (byte-level BPE with CLIP's ``</w>`` end-of-word suffix, lower-casing and word
  splitting, through ``CLIPTokenizer``) and a ``CLIPImageProcessor`` — the layout of
  ``openai/clip-vit-large-patch14`` and ``yuvalkirstain/PickScore_v1``.
- :func:`save_open_clip_checkpoint`: an open_clip ``CLIP`` state dict saved as ``{"state_dict": ...}`` in a
  ``.pt`` file — the layout of HPSv2's ``HPS_v2.1_compressed.pt`` — plus the model config as JSON in
  open_clip's model-config format (what the ``architecture`` option of ``hpsv2`` reads).
- :func:`save_aesthetic_head`: the LAION improved-aesthetic-predictor MLP, as a ``.pth`` state dict (the
  released ``sac+logos+ava1-l14-linearMSE.pth`` layout) or safetensors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

# open_clip's tokenizer is the original CLIP BPE (bundled with the package): 49,408 ids, 77 positions.
OPEN_CLIP_VOCAB_SIZE = 49408
CONTEXT_LENGTH = 77
END_OF_WORD = "</w>"
# CLIP's word splitting (the pattern of its tokenizer): special tokens, English contractions, letter runs,
# single digits, runs of other non-space characters.
_WORDS = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
_CORPUS = [
    "a red square moving left", "a cat playing with a blue ball", "a dog running on the beach at sunset",
    "a car drives slowly down a rainy street", "timelapse of clouds over a mountain, cinematic, 4k",
]


@dataclass(frozen=True)
class ClipSize:
    """Sizes of a CLIP dual encoder: embedding (projection) width, and width/layers/heads of each tower."""

    projection_dim: int
    text_width: int
    text_layers: int
    text_heads: int
    vision_width: int
    vision_layers: int
    vision_heads: int
    patch_size: int
    image_size: int
    hidden_act: str = "quick_gelu"  # OpenAI's checkpoints; LAION's (ViT-H/14) use "gelu"


TINY_CLIP = ClipSize(16, 32, 2, 2, 32, 2, 2, patch_size=8, image_size=32, hidden_act="gelu")
CLIP_VIT_B_32 = ClipSize(512, 512, 12, 8, 768, 12, 12, patch_size=32, image_size=224)  # CLIPScore's backbone
CLIP_VIT_L_14 = ClipSize(768, 768, 12, 12, 1024, 24, 16, patch_size=14, image_size=224)  # flow_grpo, aesthetic
CLIP_VIT_H_14 = ClipSize(1024, 1024, 24, 16, 1280, 32, 16, patch_size=14, image_size=224, hidden_act="gelu")


def build_clip_tokenizer(vocab_size: int = 600) -> CLIPTokenizer:
    """A CLIP tokenizer with a small BPE vocabulary trained here on a few prompts.

    Every byte also exists as a word-final token (``x</w>``), as in CLIP's own vocabulary, so no text maps to
    the unknown token (which CLIP sets to ``<|endoftext|>``, the token the text tower pools at).
    """
    backend = Tokenizer(models.BPE(end_of_word_suffix=END_OF_WORD, continuing_subword_prefix=""))
    backend.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_WORDS), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|startoftext|>", "<|endoftext|>"],
        initial_alphabet=alphabet,
        end_of_word_suffix=END_OF_WORD,
        show_progress=False,
    )
    backend.train_from_iterator(_CORPUS * 4, trainer=trainer)
    trained = json.loads(backend.to_str())["model"]
    vocab = dict(trained["vocab"])
    for token in sorted(character + END_OF_WORD for character in alphabet):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(merge) if isinstance(merge, list) else tuple(merge.split(" ")) for merge in trained["merges"]]
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=CONTEXT_LENGTH)


def save_hf_clip(
    directory: str | Path, size: ClipSize = TINY_CLIP, *, vocab_size: int | None = None, seed: int = 0
) -> Path:
    """Write a random-weight ``CLIPModel`` with its tokenizer and image processor to ``directory``.

    ``vocab_size`` defaults to the trained tokenizer's size; pass 49408 for the real models' embedding table.
    """
    directory = Path(directory)
    tokenizer = build_clip_tokenizer()
    text = {
        "vocab_size": vocab_size or len(tokenizer),
        "hidden_size": size.text_width,
        "intermediate_size": 4 * size.text_width,
        "num_hidden_layers": size.text_layers,
        "num_attention_heads": size.text_heads,
        "max_position_embeddings": CONTEXT_LENGTH,
        "hidden_act": size.hidden_act,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,  # the text tower pools at the first end-of-text token
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision = {
        "hidden_size": size.vision_width,
        "intermediate_size": 4 * size.vision_width,
        "num_hidden_layers": size.vision_layers,
        "num_attention_heads": size.vision_heads,
        "image_size": size.image_size,
        "patch_size": size.patch_size,
        "hidden_act": size.hidden_act,
    }
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=size.projection_dim))
    model.save_pretrained(directory)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": size.image_size}, crop_size={"height": size.image_size, "width": size.image_size}
    )
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(directory)
    return directory


def open_clip_config(size: ClipSize) -> dict:
    """``size`` in open_clip's model-config format (the format of its ``model_configs/ViT-H-14.json``)."""
    return {
        "embed_dim": size.projection_dim,
        "quick_gelu": size.hidden_act == "quick_gelu",
        "vision_cfg": {
            "image_size": size.image_size,
            "layers": size.vision_layers,
            "width": size.vision_width,
            "head_width": size.vision_width // size.vision_heads,
            "patch_size": size.patch_size,
        },
        "text_cfg": {
            "context_length": CONTEXT_LENGTH,
            "vocab_size": OPEN_CLIP_VOCAB_SIZE,
            "width": size.text_width,
            "heads": size.text_heads,
            "layers": size.text_layers,
        },
    }


def save_open_clip_checkpoint(weights: str | Path, size: ClipSize = TINY_CLIP, *, seed: int = 0) -> tuple[Path, Path]:
    """Write a random-weight open_clip ``CLIP`` as ``{"state_dict": ...}`` to ``weights`` (HPSv2's layout) and
    its config beside it (``<stem>.json``); returns both paths."""
    from open_clip.model import CLIP

    weights = Path(weights)
    weights.parent.mkdir(parents=True, exist_ok=True)
    config = open_clip_config(size)
    torch.manual_seed(seed)
    model = CLIP(**config)
    torch.save({"state_dict": model.state_dict()}, weights)
    config_path = weights.with_suffix(".json")
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    return weights, config_path


def aesthetic_head_state(input_dim: int, *, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in the layout of LAION's ``sac+logos+ava1-l14-linearMSE.pth``: ``layers.{0,2,4,6,7}``
    Linear input_dim->1024->128->64->16->1 (the odd indices of its ``nn.Sequential`` are dropouts)."""
    generator = torch.Generator().manual_seed(seed)
    widths = [input_dim, 1024, 128, 64, 16, 1]
    state = {}
    for index, (fan_in, fan_out) in zip((0, 2, 4, 6, 7), zip(widths, widths[1:])):
        bound = fan_in**-0.5
        state[f"layers.{index}.weight"] = (torch.rand(fan_out, fan_in, generator=generator) * 2 - 1) * bound
        state[f"layers.{index}.bias"] = (torch.rand(fan_out, generator=generator) * 2 - 1) * bound
    return state


def save_aesthetic_head(path: str | Path, input_dim: int, *, seed: int = 0) -> Path:
    """Write :func:`aesthetic_head_state` to ``path``: safetensors if it ends in ``.safetensors``, else a
    ``torch.save`` state dict like the released ``.pth``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = aesthetic_head_state(input_dim, seed=seed)
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path
