"""A tiny random-weight Wan-2.1 text-to-video pipeline, built offline.

The real classes at toy sizes — ``WanTransformer3DModel`` and ``AutoencoderKLWan`` with the small configs of
diffusers' own Wan tests, a ``UMT5EncoderModel``, a Unigram tokenizer trained locally with ``tokenizers``, and
the flow-matching ``UniPCMultistepScheduler`` that Wan2.1-Diffusers checkpoints ship — saved with
``WanPipeline.save_pretrained`` so that tests and the demo load it through the same code as real weights.

The tiny recipes name it ``model: tiny:wan`` and their prompts ``prompts: tiny:prompts`` (the eight
:data:`TINY_PROMPTS`); both are built once into the cache of :mod:`reward.model_source`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import T5TokenizerFast, UMT5Config, UMT5EncoderModel

from reward.model_source import TinyBuild, resolve_tiny

TEXT_DIM = 32
TINY_PROMPTS = (
    "a red square moving left", "a blue ball bouncing", "a dog running on the beach", "a cat on a sofa",
    "a car driving fast at night", "waves in slow motion", "a bird flying over water", "the sky at sunset",
)

_CORPUS = [
    "a red square moving left", "a blue ball bouncing", "a dog running on the beach", "a cat on a sofa",
    "bright sunny day", "dark night scene", "a car driving fast", "slow motion waves", "the sky at sunset",
    "a green tree in the wind", "people walking in a city", "a bird flying over water",
]


def build_tiny_t5_tokenizer(vocab_size: int = 256) -> T5TokenizerFast:
    """A Unigram tokenizer (NFKC, Metaspace) with T5's special tokens, trained on a few sentences."""
    backend = Tokenizer(models.Unigram())
    backend.normalizer = normalizers.NFKC()
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>", show_progress=False
    )
    backend.train_from_iterator(_CORPUS * 8, trainer=trainer)
    # Unigram training sums EM statistics in parallel, so scores can differ in the last bit between runs;
    # rounding them makes the tokenizer — and every tiny-Wan result downstream — reproducible.
    trained = json.loads(backend.to_str())["model"]
    backend.model = models.Unigram([(piece, round(score, 6)) for piece, score in trained["vocab"]], unk_id=trained["unk_id"])
    return T5TokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", extra_ids=0)


def tiny_wan_pipeline(seed: int = 0) -> WanPipeline:
    tokenizer = build_tiny_t5_tokenizer()
    torch.manual_seed(seed)
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(tokenizer), d_model=TEXT_DIM, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
            relative_attention_num_buckets=8, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id,
        )
    ).eval()
    torch.manual_seed(seed)
    vae = AutoencoderKLWan(
        base_dim=16, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    torch.manual_seed(seed)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=16,
        out_channels=16,
        text_dim=TEXT_DIM,
        freq_dim=256,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0, num_train_timesteps=1000
    )
    return WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler, transformer=transformer)


def save_tiny_wan(directory: str | Path, *, seed: int = 0) -> Path:
    """Write a tiny Wan-2.1 pipeline to ``directory``; ``WanPipeline.from_pretrained`` opens it."""
    directory = Path(directory)
    tiny_wan_pipeline(seed).save_pretrained(directory)
    return directory


def write_tiny_prompts(directory: str | Path) -> Path:
    """``directory/prompts.txt``: :data:`TINY_PROMPTS`, one per line."""
    path = Path(directory) / "prompts.txt"
    path.write_text("\n".join(TINY_PROMPTS) + "\n", encoding="utf-8")
    return path


# ``tiny:<name>`` sources of the generator side: the model and the prompt file of the tiny recipes.
TINY_WAN = {"wan": TinyBuild(save_tiny_wan, (Path(__file__),), ("torch", "transformers", "diffusers", "tokenizers"))}
TINY_PROMPT_FILES = {"prompts": TinyBuild(write_tiny_prompts, ("\n".join(TINY_PROMPTS),), entry="prompts.txt")}


def resolve_wan(source: str, *, what: str = "model") -> str:
    """A Wan source as given, or for ``tiny:wan`` its cached build."""
    return resolve_tiny(source, TINY_WAN, what=what)


def resolve_prompt_file(source: str, *, what: str = "prompts") -> str:
    """A prompt file as given, or for ``tiny:prompts`` the cached file of :data:`TINY_PROMPTS`."""
    return resolve_tiny(source, TINY_PROMPT_FILES, what=what)
