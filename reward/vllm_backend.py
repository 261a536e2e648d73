"""The vLLM CoT backend (optional extra ``vllm``, imported lazily): offline engine, colocated engine, server.

Built by :func:`reward.generation.build_backend` for ``generation.backend: vllm``; the contract it meets (same
frames, prompt-length pre-check and parity check, truncation flag) is described in :mod:`reward.generation`
and docs/descore_generation.md. The request layout follows vLLM's Qwen3-VL multimodal processor
(``vllm/model_executor/models/qwen3_vl.py`` of vllm-project/vllm: a video item is ``(frames, metadata)`` whose
``frames_indices`` and ``fps`` give the timestamps, with ``do_sample_frames`` False for pre-sampled frames); the
weight sync follows trl's colocate mode (``trl/trainer/grpo_trainer.py``: the model's ``load_weights`` on
HF-named tensors, then the prefix cache reset).
"""

from __future__ import annotations

import base64
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn
from transformers import ProcessorMixin

from .errors import CheckpointError, ConfigError
from .generation import (
    Generation,
    GenerationSettings,
    check_counts,
    check_prompt_parity,
    check_request_lengths,
    prompt_token_counts,
    to_generation,
)
from .inputs import generation_text, judge_messages
from .prompts import JudgeText
from .video import SampledVideo, write_video

logger = logging.getLogger(__name__)


def vllm_video(video: SampledVideo) -> tuple[np.ndarray, dict[str, Any]]:
    """Our sampled frames as vLLM takes a pre-decoded video: uint8 ``(T, H, W, 3)`` plus the metadata the HF
    processor gets (fps, frame indices: Qwen3-VL's timestamps), marked as already sampled."""
    frames = video.frames.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
    metadata = video.hf_metadata()
    return frames, {
        "total_num_frames": metadata.total_num_frames,
        "fps": metadata.fps,
        "duration": metadata.duration,
        "frames_indices": list(metadata.frames_indices),
        "video_backend": "descore",
        "do_sample_frames": False,
    }


# The processor must neither resample nor resize what load_video produced (as reward.inputs.encode).
VLLM_PROCESSOR_KWARGS = {"do_sample_frames": False, "do_resize": False}


def vllm_request(processor: ProcessorMixin, judge: JudgeText, video: SampledVideo) -> dict[str, Any]:
    """One offline-engine request: the chat-formatted prompt text (one video placeholder) and the frames."""
    return {
        "prompt": generation_text(processor, judge),
        "multi_modal_data": {"video": vllm_video(video)},
        "mm_processor_kwargs": dict(VLLM_PROCESSOR_KWARGS),
    }


def sampling_options(
    settings: GenerationSettings, *, num_generations: int, seed: int | None, end_ids: Sequence[int],
    suppress_token_ids: Sequence[int],
) -> dict[str, Any]:
    """``vllm.SamplingParams`` arguments equal to what :class:`HfBackend` asks of ``generate``.

    Greedy decoding asks for one sample (the copies are made here, as with HF). The suppressed tokens get a
    bias of -100, which no real logit gap overcomes; stopping is on the same end ids as HF.
    """
    options: dict[str, Any] = {
        "n": 1 if settings.greedy else num_generations,
        "max_tokens": settings.max_new_tokens,
        "temperature": settings.temperature,
        "top_p": settings.top_p,
        "top_k": settings.top_k if settings.top_k > 0 else -1,
        "repetition_penalty": settings.repetition_penalty,
        "stop_token_ids": list(end_ids),
        "skip_special_tokens": True,
        "seed": seed,
    }
    if suppress_token_ids:
        options["logit_bias"] = {int(token): -100.0 for token in suppress_token_ids}
    return options


class EngineReply(NamedTuple):
    """What vLLM returned for one video: its prompt length (video expanded) and each sample's ids with whether
    an end token stopped it."""

    prompt_tokens: int
    samples: list[tuple[list[int], bool]]


class VllmBackend:
    """CoTs from vLLM: an offline engine on a merged export (``offline``), the same engine colocated with a
    training process (``colocate``: :meth:`sync_weights` loads the trained weights into it), or an external
    OpenAI-compatible ``vllm serve`` (``server``).

    Offline and colocate hand vLLM our frames with their metadata and ``do_sample_frames=False``, so vLLM
    sees exactly the frames HF sees; the prompt length is checked against the HF processor's count after
    every call (:func:`check_prompt_parity`). The server mode cannot take decoded frames: it sends our sampled
    frames as a lossless H.264 clip at their sampling fps and asks the server not to resample them. Frame
    count and size are then the same (the prompt length is checked the same way), but the pixels differ by
    the colour subsampling of the codec (4:2:0), and the Qwen3-VL timestamps are those of the evenly spaced
    clip rather than of the source frames (a rounding apart), so server CoTs can differ slightly from offline
    ones. Start the server with ``--media-io-kwargs '{"video": {"num_frames": -1}}'`` so that it decodes every
    frame.

    Colocated use follows trl's colocate mode: one engine in the training process, weights pushed with the
    model's ``load_weights`` after each optimizer update, prefix cache reset. Set
    ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` so the engine runs in-process (the weights then move without copies
    through another process).
    """

    def __init__(
        self,
        model_path: str | Path | None,
        processor: ProcessorMixin,
        *,
        settings: GenerationSettings,
        end_ids: Sequence[int],
        suppress_token_ids: Sequence[int] = (),
        seed: int = 0,
    ) -> None:
        if settings.backend != "vllm":
            raise ConfigError(f"VllmBackend needs generation backend vllm, got {settings.backend!r}")
        self.processor = processor
        self.settings = settings
        self.end_ids = tuple(end_ids)
        self.suppress_token_ids = tuple(suppress_token_ids)
        if settings.vllm_mode == "server":
            self.engine = None
            self.server_url = settings.server_url.rstrip("/")
        else:
            if model_path is None:
                raise ConfigError(f"vllm_mode {settings.vllm_mode} needs the model folder that vLLM loads")
            check_vllm_folder(model_path)
            self.engine = _offline_engine(model_path, settings, seed=seed)

    def generate(
        self,
        judges: Sequence[JudgeText],
        videos: Sequence[SampledVideo],
        *,
        settings: GenerationSettings,
        num_generations: int = 1,
        seed: int | None = None,
    ) -> list[list[Generation]]:
        check_counts(judges, videos, num_generations)
        if settings.backend != "vllm" or settings.vllm_mode != self.settings.vllm_mode:
            raise ConfigError(f"this vLLM backend runs in {self.settings.vllm_mode} mode; got settings {settings}")
        counts = prompt_token_counts(self.processor, judges, videos)
        check_request_lengths(counts, videos, settings)
        options = [
            sampling_options(settings, num_generations=num_generations, seed=None if seed is None else seed + index,
                             end_ids=self.end_ids, suppress_token_ids=self.suppress_token_ids)
            for index in range(len(videos))
        ]
        replies = self._offline(judges, videos, options) if self.engine is not None else self._server(judges, videos, options)
        check_prompt_parity(counts, [reply.prompt_tokens for reply in replies], videos)
        results = []
        for count, reply in zip(counts, replies):
            written = [to_generation(ids, prompt_tokens=count, end_ids=self.end_ids, tokenizer=self.processor.tokenizer,
                                     stopped=stopped) for ids, stopped in reply.samples]
            results.append(written * num_generations if settings.greedy else written)
        return results

    def _offline(
        self, judges: Sequence[JudgeText], videos: Sequence[SampledVideo], options: list[dict[str, Any]]
    ) -> list[EngineReply]:
        import vllm

        requests = [vllm_request(self.processor, judge, video) for judge, video in zip(judges, videos)]
        outputs = self.engine.generate(requests, [vllm.SamplingParams(**option) for option in options], use_tqdm=False)
        return [
            EngineReply(len(output.prompt_token_ids),
                        [(list(sample.token_ids), sample.finish_reason == "stop") for sample in output.outputs])
            for output in outputs
        ]

    def _server(
        self, judges: Sequence[JudgeText], videos: Sequence[SampledVideo], options: list[dict[str, Any]]
    ) -> list[EngineReply]:
        import httpx

        replies = []
        with httpx.Client(base_url=self.server_url, timeout=None) as client:
            for judge, video, option in zip(judges, videos, options):
                response = client.post("/v1/chat/completions", json=server_payload(judge, video, option))
                response.raise_for_status()
                body = response.json()
                samples = [(_returned_ids(choice), choice["finish_reason"] == "stop") for choice in body["choices"]]
                replies.append(EngineReply(int(body["usage"]["prompt_tokens"]), samples))
        return replies

    def sync_weights(self, model: nn.Module) -> None:
        """Load ``model``'s current weights (a DeScore model, or its backbone; LoRA merged on the fly) into the
        colocated engine, then drop cached prefixes computed with the old weights."""
        if self.settings.vllm_mode != "colocate":
            raise ConfigError(f"sync_weights needs vllm_mode colocate (this backend runs {self.settings.vllm_mode})")
        backbone = getattr(model, "backbone", model)
        with merged_adapters(backbone):
            weights = list(backbone_weights(backbone))
            self.engine.apply_model(lambda engine_model: engine_model.load_weights(weights))
        self.engine.reset_prefix_cache()


def server_payload(judge: JudgeText, video: SampledVideo, option: dict[str, Any]) -> dict[str, Any]:
    """A chat-completions request carrying our sampled frames as a lossless clip at their sampling fps; no
    ``model`` is named, so the server answers with the model it serves."""
    messages = judge_messages(judge)
    content = [
        {"type": "video_url", "video_url": {"url": _video_data_url(video)}} if part["type"] == "video" else part
        for part in messages[0]["content"]
    ]
    payload = {
        "messages": [{"role": "user", "content": content}],
        "max_tokens": option["max_tokens"],
        "n": option["n"],
        "temperature": option["temperature"],
        "top_p": option["top_p"],
        "top_k": option["top_k"],
        "repetition_penalty": option["repetition_penalty"],
        "stop_token_ids": option["stop_token_ids"],
        "seed": option["seed"],
        "return_token_ids": True,
        "mm_processor_kwargs": {"do_sample_frames": False},
    }
    if "logit_bias" in option:
        payload["logit_bias"] = {str(token): bias for token, bias in option["logit_bias"].items()}
    return payload


def _video_data_url(video: SampledVideo) -> str:
    frames, _ = vllm_video(video)
    with tempfile.TemporaryDirectory() as folder:
        path = write_video(Path(folder) / "clip.mp4", frames, video.sample_fps, lossless=True)
        data = path.read_bytes()
    return "data:video/mp4;base64," + base64.b64encode(data).decode("ascii")


def _returned_ids(choice: dict[str, Any]) -> list[int]:
    ids = choice.get("token_ids")
    if ids is None:
        raise ConfigError(
            "the vLLM server returned no token_ids; the server mode needs a vLLM version that honours "
            "return_token_ids (to tell a truncated CoT from a complete one)"
        )
    return list(ids)


def check_vllm_folder(model_path: str | Path) -> None:
    """vLLM opens plain HF folders only: a DeScore adapter checkpoint must be exported (merged) first."""
    folder = Path(model_path)
    if (folder / "adapter_config.json").is_file():
        raise CheckpointError(
            f"{folder} is an adapter-format DeScore checkpoint, which vLLM cannot open; write a merged copy with "
            f"`descore reward export --model {folder} --output_dir {folder}-export` and pass that folder"
        )
    if folder.exists() and not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder} has no config.json; vLLM needs a plain (merged) HF model folder")


def _offline_engine(model_path: str | Path, settings: GenerationSettings, *, seed: int) -> Any:
    try:
        import vllm
    except ImportError as error:
        raise ConfigError("generation backend vllm needs the extra: pip install 'descore-kit[vllm]'") from error
    if settings.vllm_mode == "colocate" and os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") != "0":
        logger.warning("vllm_mode colocate: set VLLM_ENABLE_V1_MULTIPROCESSING=0 so that weights sync in-process")
    return vllm.LLM(
        model=str(model_path),
        max_model_len=settings.max_model_len,
        gpu_memory_utilization=settings.gpu_memory_utilization,
        tensor_parallel_size=settings.tensor_parallel_size,
        limit_mm_per_prompt={"image": 0, "video": 1},
        seed=seed,
    )


def backbone_weights(backbone: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The backbone's weights under the names of its saved (merged) checkpoint, which ``load_weights`` of a
    vLLM model maps itself: peft's wrapper prefixes, ``base_layer``, the ``<Reward>`` row's ``token_adapter``
    and the ``modules_to_save`` copies are undone and LoRA factors left out (call inside :func:`merged_adapters`, which
    folds LoRA and the trained rows into the weights)."""
    for name, tensor in backbone.state_dict().items():
        if "lora_" in name or ".original_module." in name or "trainable_tokens_" in name:
            continue
        name = name.removeprefix("base_model.model.").replace(".base_layer.", ".").replace(".token_adapter.", ".")
        name = name.replace(".modules_to_save.default.", ".")
        yield name, tensor


@contextmanager
def merged_adapters(backbone: nn.Module) -> Iterator[None]:
    """Fold a peft backbone's adapters (LoRA, trained token rows) into its weights for the duration of the
    block, then take them out again (a plain backbone is left alone)."""
    if not hasattr(backbone, "merge_adapter"):
        yield
        return
    backbone.merge_adapter()
    try:
        yield
    finally:
        backbone.unmerge_adapter()
