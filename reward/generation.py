"""CoT generation backends: HF ``generate`` and vLLM behind one interface (docs/descore_generation.md).

DeScore thinks before it scores: the backbone writes a chain of thought from the judge prompt and the video,
then the head reads ``<Reward>`` after it (arXiv 2605.05922, Fig. 2; the official ``inference.py`` writes the
CoT with vLLM, greedy, repetition penalty 1.05, at most 4096 new tokens, ``max_model_len`` 25600). Every
path that writes CoTs — scoring, stage-2 rollouts, ``descore reward collect-cot`` — asks a
:class:`CotBackend` for them:

* :class:`HfBackend` runs ``generate`` on the live backbone (batched, left-padded), so it always generates
  with the weights being trained.
* :class:`VllmBackend` runs a vLLM engine (the optional extra ``vllm``, imported lazily): an offline
  ``vllm.LLM`` on a merged export, the same engine colocated with a training process (whose weights
  :meth:`VllmBackend.sync_weights` refreshes after each update, as trl's colocate mode does), or an external
  vLLM OpenAI-compatible server.

Both take the frames :func:`reward.video.load_video` sampled, with their fps metadata, and tell the processor
not to sample or resize again, so one clip gives the same video tokens everywhere. The vLLM backend counts each
prompt's tokens with the HF processor first, refuses a request that cannot fit ``max_model_len`` (naming the
video and the numbers) and, after generating, compares vLLM's own prompt length with that count (the parity
check). A CoT that hit ``max_new_tokens`` before an end token is returned with ``truncated=True``.
"""

from __future__ import annotations

import base64
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
import torch
from torch import nn
from transformers import ProcessorMixin

from .errors import CheckpointError, ConfigError, DataError
from .inputs import encode, generation_text, judge_messages
from .prompts import JudgeText
from .video import SampledVideo, write_video

if TYPE_CHECKING:
    from .modeling import DeScoreModel

logger = logging.getLogger(__name__)

BACKENDS: tuple[str, ...] = ("hf", "vllm")
VLLM_MODES: tuple[str, ...] = ("offline", "colocate", "server")


@dataclass(frozen=True)
class GenerationSettings:
    """How the CoT is written and by which engine. ``temperature`` 0 means greedy decoding.

    Decoding defaults are DeScore's inference settings (greedy, repetition penalty 1.05, up to 4096 new
    tokens); stage-2 rollouts use temperature 1.0, top_p 1.0, top_k off. The ``vllm_*``, ``server_url``,
    ``max_model_len``, ``gpu_memory_utilization`` and ``tensor_parallel_size`` fields only apply to
    ``backend: vllm`` (official inference: ``max_model_len`` 25600, ``gpu_memory_utilization`` 0.7).
    """

    backend: Literal["hf", "vllm"] = "hf"
    max_new_tokens: int = 4096
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.05
    vllm_mode: Literal["offline", "colocate", "server"] = "offline"
    server_url: str | None = None
    max_model_len: int = 25600
    gpu_memory_utilization: float = 0.7
    tensor_parallel_size: int = 1

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"generation backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.vllm_mode not in VLLM_MODES:
            raise ConfigError(f"vllm_mode must be one of {VLLM_MODES}, got {self.vllm_mode!r}")
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1 (the CoT needs room for an answer), got {self.max_new_tokens}")
        if not self.temperature >= 0:
            raise ConfigError(f"temperature must be >= 0 (0 = greedy decoding), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must lie in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not self.repetition_penalty > 0:
            raise ConfigError(f"repetition_penalty must be > 0 (1 = no penalty; DeScore uses 1.05), got {self.repetition_penalty}")
        if self.max_model_len <= self.max_new_tokens:
            raise ConfigError(
                f"max_model_len ({self.max_model_len}) must exceed max_new_tokens ({self.max_new_tokens}): the prompt "
                "and its video need room too (official inference: 25600 and 4096)"
            )
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ConfigError(f"gpu_memory_utilization must lie in (0, 1], got {self.gpu_memory_utilization}")
        if self.tensor_parallel_size < 1:
            raise ConfigError(f"tensor_parallel_size must be >= 1, got {self.tensor_parallel_size}")
        if self.backend == "vllm" and self.vllm_mode == "server" and not self.server_url:
            raise ConfigError("vllm_mode: server needs server_url, e.g. http://localhost:8000 (a running `vllm serve`)")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def decoding(self) -> dict[str, Any]:
        """The fields that decide which CoT is written (engine and resource options left out): what a
        calibration or a score file records, so that a change of GPU budget does not make a new run."""
        return {name: value for name, value in asdict(self).items() if name in _DECODING_FIELDS}

    def generate_kwargs(self) -> dict[str, Any]:
        """HF ``generate`` arguments. Sampling knobs are always explicit, so the model's own generation config
        (Qwen's instruct checkpoints ship top_k 20, top_p 0.8) never changes the distribution unseen."""
        if self.greedy:
            sampling = {"do_sample": False}
        else:
            sampling = {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k}
        return {"max_new_tokens": self.max_new_tokens, "repetition_penalty": self.repetition_penalty, **sampling}


_DECODING_FIELDS = ("max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty")


@dataclass(frozen=True)
class Generation:
    """One written CoT. ``token_ids`` are the sampled response ids, including the final end token (EOS /
    ``<|im_end|>``) when one was produced; ``truncated`` is True when ``max_new_tokens`` stopped it first."""

    text: str
    token_ids: tuple[int, ...]
    prompt_tokens: int
    truncated: bool


class CotBackend(Protocol):
    """Writes CoTs for judge prompts over sampled videos."""

    def generate(
        self,
        judges: Sequence[JudgeText],
        videos: Sequence[SampledVideo],
        *,
        settings: GenerationSettings,
        num_generations: int = 1,
        seed: int | None = None,
    ) -> list[list[Generation]]:
        """One list per video, holding ``num_generations`` samples (identical copies under greedy decoding)."""
        ...

    def sync_weights(self, model: nn.Module) -> None:
        """Make the engine generate with ``model``'s current weights."""
        ...


def end_token_ids(generation_config: Any, processor: ProcessorMixin) -> tuple[int, ...]:
    """The ids that end a response: the generation config's EOS ids (Qwen instruct: ``<|im_end|>`` and
    ``<|endoftext|>``), else the tokenizer's EOS."""
    ids = getattr(generation_config, "eos_token_id", None)
    if ids is None:
        ids = processor.tokenizer.eos_token_id
    if ids is None:
        raise ConfigError("neither the generation config nor the tokenizer names an end-of-sequence token")
    return tuple(ids) if isinstance(ids, (list, tuple)) else (int(ids),)


def folder_generation_config(model_path: str | Path | None) -> Any:
    """The ``generation_config.json`` of a local model folder, or None (a hub id or a folder without one)."""
    if model_path is None or not (Path(model_path) / "generation_config.json").is_file():
        return None
    from transformers import GenerationConfig

    return GenerationConfig.from_pretrained(model_path)


def to_generation(
    token_ids: Iterable[int], *, prompt_tokens: int, end_ids: Sequence[int], tokenizer: Any
) -> Generation:
    """Cut ``token_ids`` after the first end token (what follows is padding) and decode the text without
    special tokens; no end token at all means the CoT was truncated by ``max_new_tokens``."""
    ids, ends = [], set(end_ids)
    for token in token_ids:
        ids.append(int(token))
        if token in ends:
            break
    truncated = not ids or ids[-1] not in ends
    text = tokenizer.decode(ids, skip_special_tokens=True)
    return Generation(text=text, token_ids=tuple(ids), prompt_tokens=prompt_tokens, truncated=truncated)


def prompt_token_counts(processor: ProcessorMixin, judges: Sequence[JudgeText], videos: Sequence[SampledVideo]) -> list[int]:
    """Tokens of each generation prompt with its video expanded, as the HF processor builds it."""
    counts = []
    for judge, video in zip(judges, videos, strict=True):
        batch = encode(processor, [generation_text(processor, judge)], [video])
        counts.append(int(batch["attention_mask"].sum()))
    return counts


class RequestTooLongError(DataError):
    """A prompt (with its video) plus ``max_new_tokens`` does not fit the engine's ``max_model_len``."""

    def __init__(self, video: str, *, prompt_tokens: int, max_new_tokens: int, max_model_len: int) -> None:
        self.video = video
        super().__init__(
            f"{video}: its prompt takes {prompt_tokens} tokens (video included); with max_new_tokens "
            f"{max_new_tokens} that is {prompt_tokens + max_new_tokens} > max_model_len {max_model_len}. Raise "
            "max_model_len, lower max_new_tokens, or sample the video smaller (VideoSpec fps / max_pixels)"
        )


def check_request_lengths(counts: Sequence[int], videos: Sequence[SampledVideo], settings: GenerationSettings) -> None:
    """Refuse, before anything is sent, a request the engine would cut or reject."""
    for count, video in zip(counts, videos, strict=True):
        if count + settings.max_new_tokens > settings.max_model_len:
            raise RequestTooLongError(
                video.source, prompt_tokens=count, max_new_tokens=settings.max_new_tokens,
                max_model_len=settings.max_model_len,
            )


class PromptParityError(RuntimeError):
    """vLLM built a prompt of another length than the HF processor: the two would not see the same video."""


def check_prompt_parity(expected: Sequence[int], found: Sequence[int], videos: Sequence[SampledVideo]) -> None:
    """Raise naming every video whose vLLM prompt length differs from the HF processor's."""
    problems = [
        f"{video.source}: HF {hf} tokens, vLLM {engine}"
        for hf, engine, video in zip(expected, found, videos, strict=True)
        if hf != engine
    ]
    if problems:
        raise PromptParityError(
            "vLLM and the HF processor disagree on the prompt length, so the frames, pixels or chat template "
            "differ:\n  " + "\n  ".join(problems)
        )


# ----- HF generate ---------------------------------------------------------------------------------------


class HfBackend:
    """Batched HF ``generate`` on a live backbone (a plain model or a peft wrapper), prompts left-padded.

    Sampling is seeded per call: with ``seed`` given, the draws come from the RNG state ``seed`` sets inside
    :func:`torch.random.fork_rng`, so the same call writes the same CoTs and the caller's RNG is left alone.
    ``num_generations`` > 1 samples through ``num_return_sequences``; greedy decoding returns copies of the
    one CoT (every sample would be identical).
    """

    def __init__(
        self,
        backbone: nn.Module,
        processor: ProcessorMixin,
        *,
        device: str | torch.device,
        suppress_token_ids: Sequence[int] = (),
    ) -> None:
        self.backbone = backbone
        self.processor = processor
        self.device = torch.device(device)
        self.suppress_token_ids = tuple(suppress_token_ids)

    @torch.no_grad()
    def generate(
        self,
        judges: Sequence[JudgeText],
        videos: Sequence[SampledVideo],
        *,
        settings: GenerationSettings,
        num_generations: int = 1,
        seed: int | None = None,
    ) -> list[list[Generation]]:
        _check_counts(judges, videos, num_generations)
        processor = self.processor
        texts = [generation_text(processor, judge) for judge in judges]
        batch = encode(processor, texts, videos, padding_side="left").to(self.device)
        samples = 1 if settings.greedy else num_generations
        options = {"suppress_tokens": list(self.suppress_token_ids)} if self.suppress_token_ids else {}
        with _seeded(seed, self.device):
            output = self.backbone.generate(
                **batch,
                **settings.generate_kwargs(),
                **options,
                num_return_sequences=samples,
                pad_token_id=processor.tokenizer.pad_token_id,
            )
        new_tokens = output[:, batch["input_ids"].shape[1] :].tolist()
        prompt_tokens = batch["attention_mask"].sum(dim=1).tolist()
        end_ids = end_token_ids(getattr(self.backbone, "generation_config", None), processor)
        results = []
        for index in range(len(videos)):
            rows = new_tokens[index * samples : (index + 1) * samples]
            written = [
                to_generation(row, prompt_tokens=prompt_tokens[index], end_ids=end_ids, tokenizer=processor.tokenizer)
                for row in rows
            ]
            results.append(written * num_generations if settings.greedy else written)
        return results

    def sync_weights(self, model: nn.Module) -> None:
        """Nothing to do: ``generate`` runs on the live backbone."""


def _check_counts(judges: Sequence[JudgeText], videos: Sequence[SampledVideo], num_generations: int) -> None:
    if len(judges) != len(videos):
        raise ValueError(f"got {len(judges)} judge prompts for {len(videos)} videos")
    if num_generations < 1:
        raise ValueError(f"num_generations must be >= 1, got {num_generations}")


@contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """The global RNGs (CPU, and ``device`` on CUDA) start from ``seed`` inside the block and are restored
    afterwards; no-op without a seed."""
    if seed is None:
        yield
        return
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


# ----- vLLM ----------------------------------------------------------------------------------------------


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


class VllmBackend:
    """CoTs from vLLM: an offline engine on a merged export (``offline``), the same engine colocated with a
    training process (``colocate``: :meth:`sync_weights` loads the trained weights into it), or an external
    OpenAI-compatible ``vllm serve`` (``server``).

    Offline and colocate hand vLLM our frames with their metadata and ``do_sample_frames=False``, so vLLM
    sees exactly the frames HF sees; the prompt length is checked against the HF processor's count after
    every call (:func:`check_prompt_parity`). The server mode cannot take decoded frames: it sends our sampled
    frames as a lossless H.264 clip at their sampling fps and asks the server not to resample them. Frame
    count and size are then the same (the prompt length is checked the same way), but the pixels differ by
    the colour subsampling of the codec (4:2:0), so server CoTs can differ slightly from offline ones. Start the
    server with ``--media-io-kwargs '{"video": {"num_frames": -1}}'`` so that it decodes every frame.

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
            self.model_name = str(model_path) if model_path is not None else None
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
        _check_counts(judges, videos, num_generations)
        if settings.backend != "vllm" or settings.vllm_mode != self.settings.vllm_mode:
            raise ConfigError(f"this vLLM backend runs in {self.settings.vllm_mode} mode; got settings {settings}")
        counts = prompt_token_counts(self.processor, judges, videos)
        check_request_lengths(counts, videos, settings)
        options = [
            sampling_options(settings, num_generations=num_generations, seed=None if seed is None else seed + index,
                             end_ids=self.end_ids, suppress_token_ids=self.suppress_token_ids)
            for index in range(len(videos))
        ]
        if self.engine is not None:
            found, token_rows = self._offline(judges, videos, options)
        else:
            found, token_rows = self._server(judges, videos, options)
        check_prompt_parity(counts, found, videos)
        results = []
        for count, rows in zip(counts, token_rows):
            written = [to_generation(row, prompt_tokens=count, end_ids=self.end_ids, tokenizer=self.processor.tokenizer)
                       for row in rows]
            results.append(written * num_generations if settings.greedy else written)
        return results

    def _offline(self, judges, videos, options) -> tuple[list[int], list[list[list[int]]]]:
        import vllm

        requests = [vllm_request(self.processor, judge, video) for judge, video in zip(judges, videos)]
        outputs = self.engine.generate(requests, [vllm.SamplingParams(**option) for option in options], use_tqdm=False)
        return [len(output.prompt_token_ids) for output in outputs], [
            [list(sample.token_ids) for sample in output.outputs] for output in outputs
        ]

    def _server(self, judges, videos, options) -> tuple[list[int], list[list[list[int]]]]:
        import httpx

        counts, rows = [], []
        with httpx.Client(base_url=self.server_url, timeout=None) as client:
            for judge, video, option in zip(judges, videos, options):
                response = client.post("/v1/chat/completions", json=server_payload(judge, video, option, model=self.model_name))
                response.raise_for_status()
                body = response.json()
                counts.append(int(body["usage"]["prompt_tokens"]))
                rows.append([_returned_ids(choice) for choice in body["choices"]])
        return counts, rows

    def sync_weights(self, model: nn.Module) -> None:
        """Load ``model``'s current weights (a DeScore model, or its backbone; LoRA merged on the fly) into the
        colocated engine, then drop cached prefixes computed with the old weights."""
        if self.settings.vllm_mode != "colocate":
            raise ConfigError(f"sync_weights needs vllm_mode colocate (this backend runs {self.settings.vllm_mode})")
        backbone = getattr(model, "backbone", model)
        with _merged(backbone):
            weights = list(backbone_weights(backbone))
            self.engine.apply_model(lambda engine_model: engine_model.load_weights(weights))
        self.engine.reset_prefix_cache()


def server_payload(judge: JudgeText, video: SampledVideo, option: dict[str, Any], *, model: str | None) -> dict[str, Any]:
    """A chat-completions request carrying our sampled frames as a lossless clip at their sampling fps."""
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
    if model is not None:
        payload["model"] = model
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
        enable_sleep_mode=settings.vllm_mode == "colocate",
        seed=seed,
    )


def backbone_weights(backbone: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The backbone's weights under the names of its saved (merged) checkpoint, which ``load_weights`` of a
    vLLM model maps itself: peft's wrapper prefixes, ``base_layer``, the ``<Reward>`` row's ``token_adapter``
    and the ``modules_to_save`` copies are undone and LoRA factors left out (call inside :class:`_merged`, which
    folds LoRA and the trained rows into the weights)."""
    for name, tensor in backbone.state_dict().items():
        if "lora_" in name or ".original_module." in name or "trainable_tokens_" in name:
            continue
        name = name.removeprefix("base_model.model.").replace(".base_layer.", ".").replace(".token_adapter.", ".")
        name = name.replace(".modules_to_save.default.", ".")
        yield name, tensor


class _merged:
    """Fold a peft backbone's adapters into its weights for the duration of the block (no-op otherwise)."""

    def __init__(self, backbone: nn.Module) -> None:
        self.backbone = backbone
        self.peft = hasattr(backbone, "merge_adapter")

    def __enter__(self) -> None:
        if self.peft:
            self.backbone.merge_adapter()

    def __exit__(self, *exc_info: Any) -> None:
        if self.peft:
            self.backbone.unmerge_adapter()


# ----- building one --------------------------------------------------------------------------------------


def build_backend(
    settings: GenerationSettings,
    *,
    model: DeScoreModel | None = None,
    model_path: str | Path | None = None,
    processor: ProcessorMixin | None = None,
    backbone: nn.Module | None = None,
    device: str | torch.device = "cpu",
    suppress_token_ids: Sequence[int] | None = None,
    seed: int = 0,
) -> CotBackend:
    """The backend ``settings.backend`` names.

    With a DeScore ``model``, its backbone, processor and ``<Reward>`` id (suppressed) are used; a plain
    instruct model is given as ``processor`` + ``backbone`` (HF) or ``processor`` + ``model_path`` (vLLM).
    vLLM loads ``model_path``, a merged folder (``descore reward export``), in offline and colocate mode.
    """
    if model is not None:
        processor, backbone = model.processor, model.backbone
        suppress_token_ids = (model.reward_token_id,) if suppress_token_ids is None else suppress_token_ids
    if processor is None:
        raise ConfigError("build_backend needs a DeScore model or a processor")
    suppress = tuple(suppress_token_ids or ())
    if settings.backend == "hf":
        if backbone is None:
            raise ConfigError("generation backend hf needs the loaded backbone")
        return HfBackend(backbone, processor, device=device, suppress_token_ids=suppress)
    generation_config = getattr(backbone, "generation_config", None) or folder_generation_config(model_path)
    return VllmBackend(
        model_path, processor, settings=settings, end_ids=end_token_ids(generation_config, processor),
        suppress_token_ids=suppress, seed=seed,
    )
