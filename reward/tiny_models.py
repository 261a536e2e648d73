"""Tiny random-weight Qwen3-VL and Qwen2.5-VL checkpoints, built offline.

Tests and the demo run the real architectures at toy sizes: the config classes of the real models, a
byte-level BPE tokenizer trained locally with ``tokenizers`` (with the Qwen vision special tokens), the real
image/video processors and a Qwen-style chat template. Everything is saved with ``save_pretrained`` so it is
loaded back through exactly the code a user runs on ``Qwen/Qwen3-VL-8B-Instruct``.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Literal

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2TokenizerFast,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
    Qwen3VLVideoProcessor,
)

from .model_source import TinyBuild, resolve_tiny
from .prompts import JUDGE_TEMPLATE, SUB_DIMENSIONS

TinyFamily = Literal["qwen3_vl", "qwen2_5_vl"]

SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Qwen-style ChatML template: a video item becomes <|vision_start|><|video_pad|><|vision_end|>, which the
# processor expands into the video's tokens (with per-frame timestamps for Qwen3-VL).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Patch geometry of the real models: Qwen3-VL 16 px patches (32 px per merged token), Qwen2.5-VL 14 px (28).
_PATCH_SIZE = {"qwen3_vl": 16, "qwen2_5_vl": 14}


def _training_corpus() -> list[str]:
    words = "red green blue yellow square circle ball dog cat car moves left right up down slowly fast"
    scores = [f'{{"dimensional_scores": {{"{d}": {v}}}, "overall_score": {v + 1}.50}}' for d in SUB_DIMENSIONS for v in (0, 1, 2)]
    return [JUDGE_TEMPLATE, words, *scores, "The video shows a clean, smooth clip. <answer> </answer> ```json"] * 4


def build_tiny_tokenizer(vocab_size: int = 2000) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on a small corpus and wrap it as a Qwen2 tokenizer with vision tokens."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_training_corpus(), trainer=trainer)
    return Qwen2TokenizerFast(
        tokenizer_object=backend,
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={
            "image_token": "<|image_pad|>",
            "video_token": "<|video_pad|>",
            "vision_start_token": "<|vision_start|>",
            "vision_end_token": "<|vision_end|>",
        },
    )


def _processor(family: TinyFamily, tokenizer: PreTrainedTokenizerFast):
    patch = _PATCH_SIZE[family]
    factor = patch * 2
    geometry = {"patch_size": patch, "temporal_patch_size": 2, "merge_size": 2}
    size = {"shortest_edge": 4 * factor * factor, "longest_edge": 64 * factor * factor}
    image_processor = Qwen2VLImageProcessor(**geometry, size=size)
    if family == "qwen3_vl":
        video_processor = Qwen3VLVideoProcessor(**geometry, size=size)
        return Qwen3VLProcessor(image_processor, tokenizer, video_processor, chat_template=CHAT_TEMPLATE)
    video_processor = Qwen2VLVideoProcessor(**geometry, size=size)
    return Qwen2_5_VLProcessor(image_processor, tokenizer, video_processor, chat_template=CHAT_TEMPLATE)


def _token_ids(tokenizer: PreTrainedTokenizerFast) -> dict[str, int]:
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in (
        ("image_token_id", "<|image_pad|>"),
        ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"),
        ("vision_end_token_id", "<|vision_end|>"),
    )}
    return ids


def _model(family: TinyFamily, tokenizer: PreTrainedTokenizerFast, hidden_size: int, layers: int):
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 8192,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    head_dim = hidden_size // 4
    # M-RoPE sections (temporal, height, width) must sum to head_dim / 2.
    quarter = head_dim // 8
    mrope = [head_dim // 2 - 2 * quarter, quarter, quarter]
    vision = {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "out_hidden_size": hidden_size,
        "patch_size": _PATCH_SIZE[family],
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }
    if family == "qwen3_vl":
        text |= {"head_dim": head_dim, "rope_parameters": {
            "rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope, "mrope_interleaved": True}}
        vision |= {"deepstack_visual_indexes": [1], "num_position_embeddings": 256}
        config = Qwen3VLConfig(text_config=text, vision_config=vision, **_token_ids(tokenizer))
        return Qwen3VLForConditionalGeneration(config)
    text |= {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope}}
    vision |= {"window_size": 2 * _PATCH_SIZE[family] * 2, "fullatt_block_indexes": [1], "in_chans": 3}
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **_token_ids(tokenizer))
    return Qwen2_5_VLForConditionalGeneration(config)


def save_tiny_vlm(
    directory: str | Path,
    family: TinyFamily = "qwen3_vl",
    *,
    hidden_size: int = 64,
    layers: int = 2,
    seed: int = 0,
) -> Path:
    """Build a tiny random-weight ``family`` model with tokenizer, processor and chat template in ``directory``.

    The directory is a normal Hugging Face checkpoint: ``AutoModelForImageTextToText.from_pretrained`` and
    ``AutoProcessor.from_pretrained`` open it, exactly as they open the real model.
    """
    directory = Path(directory)
    torch.manual_seed(seed)
    tokenizer = build_tiny_tokenizer()
    model = _model(family, tokenizer, hidden_size, layers)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(directory)
    _processor(family, tokenizer).save_pretrained(directory)
    return directory


_VLM_RECIPE = (Path(__file__), Path(__file__).with_name("prompts.py"))  # the tokenizer is trained on the judge prompt
_VLM_LIBRARIES = ("torch", "transformers", "tokenizers")
# ``tiny:<name>`` backbones: what the tiny reward recipes (``model_name_or_path: tiny:qwen3-vl``) start from.
TINY_VLMS: dict[str, TinyBuild] = {
    "qwen3-vl": TinyBuild(partial(save_tiny_vlm, family="qwen3_vl"), _VLM_RECIPE, _VLM_LIBRARIES),
    "qwen2.5-vl": TinyBuild(partial(save_tiny_vlm, family="qwen2_5_vl"), _VLM_RECIPE, _VLM_LIBRARIES),
}


def resolve_backbone(source: str, *, what: str = "model_name_or_path") -> str:
    """A backbone source as given, or for ``tiny:qwen3-vl`` / ``tiny:qwen2.5-vl`` its cached build."""
    return resolve_tiny(source, TINY_VLMS, what=what)
