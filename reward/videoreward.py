"""VideoReward (VideoAlign; Liu et al., "Improving Video Generation with Human Feedback", arXiv 2501.13918).

A Qwen2-VL backbone reads the video and a rubric in three sections, visual quality (VQ), motion quality (MQ)
and text alignment (TA); each section ends with its own added token (``<|VQ_reward|>``, ``<|MQ_reward|>``,
``<|TA_reward|>``). A bias-free linear ``rm_head`` maps the last hidden state (after the final norm) at each
of the three tokens to one raw score: with ``output_dim`` 3 head row k is read at token k (VideoAlign's
``trainer.py::Qwen2VLRewardModelBT`` takes the diagonal of the [B, 3, 3] logits); with ``output_dim`` 1 (the
released ``KwaiVGI/VideoReward``) the one row is read at all three. The prompt appears only in the TA section,
after the VQ and MQ tokens, so under causal attention those two scores cannot see it.

Positions: VideoAlign's forward embeds the tokens, scatters the vision features in and calls the language
model with ``inputs_embeds`` and no position ids, so its language model numbers the tokens 0, 1, 2, ... and
copies that number onto the three M-RoPE axes; Qwen2-VL's own 3-D (time, height, width) positions are never
computed. The released weights were trained that way, so :class:`VideoRewardModel` passes those 1-D positions
explicitly (transformers 5 broadcasts 2-D ``position_ids`` onto the three axes; tests/reward/test_videoreward.py
checks this against a forward that passes the three axes itself).

Scores: normalised = (raw - mean) / std per head, with the statistics of ``model_config.json``
``inference_config``; Overall = VQ + MQ + TA after normalisation (``inference.py::VideoVLMRewardInference``).
Higher is better. docs/reward_zoo/videoreward.md lists the options and where this differs from upstream.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from .base import RewardOutput, ScoredItem, register_reward, sampled_batches
from .errors import CheckpointError, ConfigError
from .inputs import encode
from .upstream_weights import copy_checked, merge_lora
from .video import DecodeLimits, SampledVideo, VideoSource, VideoSpec
from .videoreward_layout import (
    DIMENSIONS, EMBED_KEY, HEAD_KEY, SPECIAL_TOKENS, CheckpointTensors, HeadStatistics, VideoRewardConfig,
    find_checkpoint, read_checkpoint,
)


REWARD_NAMES: tuple[str, ...] = (*DIMENSIONS, "Overall")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# VideoAlign's vision_process.py: 128 merged 28-px tokens at least per frame; max_frame_pixels comes from the config.
_MIN_FRAME_PIXELS = 128 * 28 * 28

# Our wording of VideoAlign's "detailed_special" rubric structure (prompt_template.py): three sections, each
# ending with a rating request, its reward token and END; the prompt only inside the last one.
DEFAULT_TEMPLATE = """\
Rate the generated video below on three separate criteria: visual quality, motion quality and text alignment. \
Score each criterion on its own, from 0 (worst) to 10 (best).

Visual quality (judge the frames as still pictures):
- plausibility: bodies, objects and scenes are well formed and make sense;
- sharpness: content is crisp and legible, free of blur and smearing;
- detail: textures, materials, hair, fabric and light are rich and convincing;
- aesthetics: colour, composition, depth and mood are pleasing and balanced;
- safety: nothing violent, explicit or otherwise harmful (if present, this is the lowest score).
Your visual quality rating: <|VQ_reward|>
END

Motion quality (judge how things move over time):
- stability: no flicker, sudden jumps, or shapes and colours that come and go between frames;
- physical sense: movement, cloth, hair and faces behave as they would in reality;
- smoothness: motion and camera changes flow without stutter;
- integration: moving parts blend with their surroundings, with no cut-out edges;
- clarity: moving regions stay sharp rather than smeared;
- amount: a video that barely moves gets a low motion score.
Your motion quality rating: <|MQ_reward|>
END

Text alignment (compare the video with the prompt it was generated from):
- subjects: the right number, look and behaviour of people, animals and objects;
- actions: gestures, poses and movements of the kind, size and direction asked for;
- setting: the background and location asked for;
- style: the artistic style asked for, if any;
- camera: the camera movement asked for, if any.
Prompt: {prompt}
Your text alignment rating: <|TA_reward|>
END
"""


def rubric_template(template: str | Path | None) -> str:
    """The rubric to use: ours (None), a template string containing ``{prompt}``, or a file holding one.

    Raises:
        ConfigError: the file does not exist, or the text lacks ``{prompt}`` or has a reward token other than
            exactly once.
    """
    if template is None:
        return DEFAULT_TEMPLATE
    text = str(template)
    if "{prompt}" not in text:
        path = Path(text).expanduser()
        if not path.is_file():
            raise ConfigError(f"template {text!r} is neither a file nor a template string containing {{prompt}}")
        text = path.read_text()
    problems = [f"{token} appears {text.count(token)} times" for token in SPECIAL_TOKENS if text.count(token) != 1]
    if "{prompt}" not in text:
        problems.append("{prompt} is missing")
    if problems:
        raise ConfigError(f"template: {'; '.join(problems)} (each reward token must appear exactly once)")
    return text


def sampling_spec(config: VideoRewardConfig, overrides: Mapping[str, Any] | None = None) -> VideoSpec:
    """VideoAlign's sampling (``vision_process.py``): ``fps`` uniform frames, 4..768 of them, each resized to
    multiples of 28 px within [128·28², max_frame_pixels]; a fixed ``num_frames`` pins both frame bounds."""
    spec = VideoSpec(fps=config.fps, min_frames=4, max_frames=768, min_pixels=_MIN_FRAME_PIXELS,
                     max_pixels=config.max_frame_pixels, pixel_factor=28)
    if config.num_frames is not None:
        spec = replace(spec, min_frames=config.num_frames, max_frames=config.num_frames)
    try:
        return VideoSpec.from_dict({**spec.to_dict(), **(overrides or {})})
    except (TypeError, ValueError) as error:
        raise ConfigError(f"video_spec: {error}") from error


def sequential_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, L) positions 0, 1, 2, ... over each row's real tokens, as VideoAlign's language model sees them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def read_reward_tokens(logits: torch.Tensor, input_ids: torch.Tensor, token_ids: Sequence[int]) -> torch.Tensor:
    """(B, 3) raw (VQ, MQ, TA): head outputs (B, L, 1 or 3) at each reward token; with 3 outputs, row k at token k.

    Raises:
        ValueError: a row does not hold each reward token exactly once.
    """
    columns = []
    for index, token in enumerate(token_ids):
        hits = input_ids == token
        counts = hits.sum(-1)
        if not bool((counts == 1).all()):
            raise ValueError(f"each sequence needs {SPECIAL_TOKENS[index]} exactly once; counts per row: {counts.tolist()}")
        at_token = logits[hits]  # (B, output_dim), rows in batch order
        columns.append(at_token[:, index] if logits.shape[-1] == len(token_ids) else at_token[:, 0])
    return torch.stack(columns, dim=-1)


def normalized(raw: torch.Tensor, statistics: HeadStatistics | None) -> torch.Tensor:
    """(B, 4): (VQ, MQ, TA) standardised with ``statistics`` (raw when None), then Overall = their sum."""
    if statistics is not None:
        raw = (raw - torch.tensor(statistics.means)) / torch.tensor(statistics.stds)
    return torch.cat([raw, raw.sum(-1, keepdim=True)], dim=-1)


class VideoRewardModel(nn.Module):
    """Qwen2-VL + ``rm_head``; ``forward`` returns the (B, 3) raw head scores. The head runs in float32."""

    def __init__(self, backbone: nn.Module, head: nn.Linear, token_ids: Sequence[int]) -> None:
        super().__init__()
        self.backbone, self.head, self.token_ids = backbone, head.float(), tuple(token_ids)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values_videos: torch.Tensor,
                video_grid_thw: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=sequential_positions(attention_mask),
            pixel_values_videos=pixel_values_videos, video_grid_thw=video_grid_thw, use_cache=False,
        ).last_hidden_state
        return read_reward_tokens(self.head(hidden.float()), input_ids, self.token_ids)


def load_videoreward(
    folder: Path, *, step: int | None = None, base_model: str | None = None, dtype: torch.dtype = torch.float32
) -> tuple[VideoRewardModel, Any]:
    """Rebuild VideoAlign's model from a checkpoint folder: base Qwen2-VL + reward tokens + trained tensors.

    The processor and weights of the base come from ``base_model`` (a folder or hub id) or else the config's
    ``model_name_or_path``; the reward tokens are added to its tokenizer and the embedding resized, as
    VideoAlign's ``create_model_and_processor`` does; then the checkpoint's tensors are loaded and its LoRA
    merged (peft). Raises CheckpointError on missing, unexpected or misshapen tensors.
    """
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    config = VideoRewardConfig.read(folder)
    tensors = read_checkpoint(find_checkpoint(folder, step))
    base = base_model or config.base_model
    revision = None if base_model is not None or Path(base).exists() else config.base_revision
    processor = AutoProcessor.from_pretrained(base, revision=revision, padding_side="right")
    processor.tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
    backbone = Qwen2VLForConditionalGeneration.from_pretrained(base, revision=revision, dtype=dtype)
    if backbone.config.model_type != "qwen2_vl":
        raise CheckpointError(f"base model {base} is a {backbone.config.model_type}, but VideoReward is built on qwen2_vl")
    backbone.resize_token_embeddings(len(processor.tokenizer), mean_resizing=False)
    head = nn.Linear(backbone.config.text_config.hidden_size, config.output_dim, bias=False)
    _load_weights(backbone, head, tensors, folder=folder)
    backbone = _merge_lora(backbone, tensors.lora, config, folder=folder)
    token_ids = processor.tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS))
    return VideoRewardModel(backbone.eval(), head, token_ids).eval(), processor


def _load_weights(backbone: nn.Module, head: nn.Linear, tensors: CheckpointTensors, *, folder: Path) -> None:
    """Copy the checkpoint's weights in; every key must be known, shaped right and (model.pth) complete."""
    targets = {**backbone.state_dict(), HEAD_KEY: head.weight}
    weights = dict(tensors.weights)
    if backbone.config.tie_word_embeddings:
        # One tensor with the embedding (the released model.pth holds it under both names): load it once.
        del targets["lm_head.weight"]
        weights.pop("lm_head.weight", None)
    required = set(targets) if tensors.complete else {HEAD_KEY, EMBED_KEY}
    copy_checked(weights, targets, required=required, what=f"{folder}: checkpoint does not fit its Qwen2-VL base")


def _merge_lora(backbone: nn.Module, lora: Mapping[str, tuple[torch.Tensor, torch.Tensor]], config: VideoRewardConfig,
                *, folder: Path) -> nn.Module:
    """Apply the LoRA pairs with peft and merge them into the linear weights (scale from ``peft_lora_config``)."""
    if bool(lora) != config.lora_enabled:
        raise CheckpointError(
            f"{folder}: peft_lora_config.lora_enable is {config.lora_enabled} but the checkpoint holds "
            f"{len(lora)} LoRA layers"
        )
    return merge_lora(backbone, lora, rank=config.lora_rank, alpha=config.lora_alpha, use_rslora=config.use_rslora,
                      source=folder)


@register_reward("videoreward")
class VideoReward:
    """VideoReward as a :class:`reward.base.RewardModel`; ``sub_scores`` hold VQ, MQ, TA and Overall.

    Args:
        path: a VideoReward folder (``model_config.json`` + ``checkpoint-<step>/``) or a hub id such as
            ``KwaiVGI/VideoReward``.
        revision: branch, tag or commit of a hub id.
        step: which ``checkpoint-<step>`` to load (default: the highest).
        base_model: the Qwen2-VL to build on (folder or hub id); default: ``model_name_or_path`` of the config.
        dimension: the reward: ``VQ``, ``MQ``, ``TA`` or ``Overall`` (VQ + MQ + TA).
        normalize: standardise each head with the checkpoint's ``inference_config`` (False: raw heads).
        template: the rubric: a string containing ``{prompt}`` or a file holding one, with each reward token
            exactly once (default: ours; VideoAlign's own text is needed for bit-identical scores).
        video_spec: :class:`reward.video.VideoSpec` fields that replace the checkpoint's sampling.
        batch_size: videos per forward pass.
        skip_invalid: record unreadable videos as failed items (reward NaN, ``error`` set) instead of raising.
        progress: show a progress bar over batches.
        device, dtype: where and in which dtype to run the backbone (default: CUDA if present, bf16 there).
        decode_limits: what one video file may cost to decode (:class:`reward.video.DecodeLimits` or its fields).
    """

    name = "videoreward"

    def __init__(
        self,
        path: str | Path,
        *,
        revision: str | None = None,
        step: int | None = None,
        base_model: str | None = None,
        dimension: str = "Overall",
        normalize: bool = True,
        template: str | None = None,
        video_spec: Mapping[str, Any] | None = None,
        batch_size: int = 4,
        skip_invalid: bool = False,
        progress: bool = False,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        decode_limits: DecodeLimits | Mapping[str, Any] | None = None,
    ) -> None:
        if dimension not in REWARD_NAMES:
            raise ConfigError(f"dimension must be one of {list(REWARD_NAMES)}, got {dimension!r}")
        if not isinstance(normalize, bool):
            raise ConfigError(f"normalize must be true or false, got {normalize!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if step is not None and (not isinstance(step, int) or step < 0):
            raise ConfigError(f"step must be a checkpoint step (an integer >= 0), got {step!r}")
        self.template = rubric_template(template)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if isinstance(decode_limits, Mapping):
            try:
                decode_limits = DecodeLimits(**decode_limits)
            except TypeError as error:
                raise ConfigError(f"decode_limits: {error}") from error
        self.decode_limits = decode_limits or DecodeLimits()
        folder = _checkpoint_folder(path, revision)
        config = VideoRewardConfig.read(folder)  # checked before the weights load
        if normalize and config.statistics is None:
            raise ConfigError(f"{folder}/model_config.json has no inference_config to normalise with; pass normalize: false")
        self.statistics = config.statistics if normalize else None
        self.spec = sampling_spec(config, video_spec)
        self.dimension, self.batch_size, self.skip_invalid, self.progress = dimension, batch_size, skip_invalid, progress
        self.model, self.processor = load_videoreward(
            folder, step=step, base_model=base_model, dtype=_resolve_dtype(dtype, self.device)
        )
        self.model.to(self.device)

    def chat_text(self, prompt: str) -> str:
        """One user turn: the video, then the rubric with ``prompt`` in its TA section."""
        rubric = self.template.replace("{prompt}", prompt)
        messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": rubric}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    @torch.no_grad()
    def scores(self, clips: Sequence[SampledVideo], prompts: Sequence[str]) -> torch.Tensor:
        """(B, 4) float32 (VQ, MQ, TA, Overall) for already sampled clips, normalised unless ``normalize`` is off."""
        batch = encode(self.processor, [self.chat_text(p) for p in prompts], clips, padding_side="right").to(self.device)
        raw = self.model(batch["input_ids"], batch["attention_mask"], batch["pixel_values_videos"], batch["video_grid_thw"])
        return normalized(raw.float().cpu(), self.statistics)

    def score(self, videos: Sequence[VideoSource], prompts: Sequence[str]) -> RewardOutput:
        if len(videos) != len(prompts):
            raise ValueError(f"got {len(videos)} videos and {len(prompts)} prompts")
        holding = [index for index, prompt in enumerate(prompts) if any(token in prompt for token in SPECIAL_TOKENS)]
        if holding:
            raise ValueError(f"prompts {holding} contain a reward token ({', '.join(SPECIAL_TOKENS)}); remove it")
        items: list[ScoredItem | None] = [None] * len(videos)
        for loaded in sampled_batches(videos, self.spec, self.decode_limits, batch_size=self.batch_size,
                                      skip_invalid=self.skip_invalid, items=items,
                                      progress="scoring (videoreward)" if self.progress else None):
            table = self.scores([clip for _, clip in loaded], [prompts[i] for i, _ in loaded])
            for (index, _), row in zip(loaded, table.tolist()):
                sub_scores = dict(zip(REWARD_NAMES, row))
                items[index] = ScoredItem(reward=sub_scores[self.dimension], sub_scores=sub_scores)
        return RewardOutput(items=items)


def _resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """The backbone dtype: as given, else bf16 on GPU (VideoAlign's inference dtype) and fp32 on CPU."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ConfigError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    return _DTYPES[dtype]


_HUB_FILES = ["model_config.json", "checkpoint-*/*.json", "checkpoint-*/*.safetensors", "checkpoint-*/*.pth"]


def _checkpoint_folder(path: str | Path, revision: str | None) -> Path:
    """A local folder as is, or the hub snapshot of an ``owner/name`` id (weights: safetensors and ``.pth``,
    which is only ever read with ``weights_only=True``)."""
    from .run_record import looks_like_hub_id

    local = Path(path).expanduser()
    if local.is_dir():
        if revision is not None:
            raise ConfigError(f"revision {revision!r} applies to a hub id, but {path} is a local folder")
        return local
    if not looks_like_hub_id(str(path)):
        raise ConfigError(f"{path} is not a VideoReward folder (and not a hub id of the form owner/name)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(str(path), revision=revision, allow_patterns=_HUB_FILES))
    except (LocalEntryNotFoundError, HfHubHTTPError) as error:
        raise CheckpointError(f"{path} cannot be fetched from the hub or its cache: {error}") from error
