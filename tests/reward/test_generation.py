"""CoT generation backends: HF generate batched equals one by one, seeded sampling, truncation, the vLLM request
checks that run without vLLM, and the vLLM engine itself where it imports."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from reward.errors import CheckpointError, ConfigError
from reward.generation import (
    GenerationSettings,
    HfBackend,
    PromptParityError,
    RequestTooLongError,
    backbone_weights,
    build_backend,
    check_prompt_parity,
    check_request_lengths,
    check_vllm_folder,
    prompt_token_counts,
    sampling_options,
    vllm_request,
    _merged,
)
from reward.modeling import DeScoreModel, save_descore
from reward.prompts import judge_text
from reward.scoring import DeScoreReward
from reward.video import load_video

from ..conftest import TINY_SPEC
from .helpers import small_clip, trained_like

PROMPTS = ["a red square moving left", "a cat", "a long prompt about a red square that glides to the left slowly"]


@pytest.fixture(scope="module")
def model(checkpoint) -> DeScoreModel:
    return DeScoreModel.from_pretrained(checkpoint, dtype="float32").eval()


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("generation-clips")
    return [load_video(small_clip(root / f"{i}.mp4", seed=i, frames=6 + 2 * i), TINY_SPEC) for i in range(3)]


def judges():
    return [judge_text(prompt) for prompt in PROMPTS]


def backend(model: DeScoreModel) -> HfBackend:
    return build_backend(GenerationSettings(), model=model)


def test_batched_greedy_equals_one_by_one(model, clips):
    """Left padding must not change a CoT: the batch of three writes what three single calls write."""
    settings = GenerationSettings(max_new_tokens=8)
    together = backend(model).generate(judges(), clips, settings=settings)
    alone = [backend(model).generate([judge], [clip], settings=settings)[0] for judge, clip in zip(judges(), clips)]
    assert [samples[0].token_ids for samples in together] == [samples[0].token_ids for samples in alone]
    assert [samples[0].text for samples in together] == [samples[0].text for samples in alone]
    counts = prompt_token_counts(model.processor, judges(), clips)
    assert [samples[0].prompt_tokens for samples in together] == counts
    assert len(set(counts)) == 3  # different prompts and clip lengths, so the batch really was padded


def test_seeded_sampling_is_reproducible_and_leaves_the_caller_rng_alone(model, clips):
    settings = GenerationSettings(max_new_tokens=8, temperature=1.0, top_p=1.0)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = backend(model).generate(judges()[:2], clips[:2], settings=settings, num_generations=2, seed=7)
    assert torch.equal(torch.get_rng_state(), before)
    again = backend(model).generate(judges()[:2], clips[:2], settings=settings, num_generations=2, seed=7)
    other = backend(model).generate(judges()[:2], clips[:2], settings=settings, num_generations=2, seed=8)
    ids = lambda result: [[sample.token_ids for sample in samples] for samples in result]  # noqa: E731
    assert ids(first) == ids(again)
    assert ids(first) != ids(other)
    assert first[0][0].token_ids != first[0][1].token_ids  # the samples of one video differ


@pytest.mark.parametrize("temperature", [0.0, 1.0], ids=["greedy", "sampled"])
def test_num_generations_shapes(model, clips, temperature):
    settings = GenerationSettings(max_new_tokens=4, temperature=temperature)
    result = backend(model).generate(judges(), clips, settings=settings, num_generations=3, seed=0)
    assert [len(samples) for samples in result] == [3, 3, 3]
    assert all(len(sample.token_ids) == 4 and sample.truncated for samples in result for sample in samples)
    if temperature == 0.0:
        assert all(len({sample.token_ids for sample in samples}) == 1 for samples in result)


def test_truncated_flag_and_end_token(model, clips):
    """Without an end token within max_new_tokens the CoT is truncated; making its third token the end token
    stops it there, end token included in token_ids and left out of the text."""
    settings = GenerationSettings(max_new_tokens=6)
    (cut,) = backend(model).generate(judges()[:1], clips[:1], settings=settings)[0]
    assert cut.truncated and len(cut.token_ids) == 6
    end = cut.token_ids[2]
    stop = cut.token_ids.index(end)
    config = model.backbone.generation_config
    original = config.eos_token_id
    config.eos_token_id = [end]
    try:
        (ended,) = backend(model).generate(judges()[:1], clips[:1], settings=settings)[0]
    finally:
        config.eos_token_id = original
    assert not ended.truncated
    assert ended.token_ids == cut.token_ids[: stop + 1]
    tokenizer = model.processor.tokenizer
    assert ended.text == tokenizer.decode(list(cut.token_ids[: stop + 1]), skip_special_tokens=True)


def test_suppressed_token_is_never_written(model, clips):
    settings = GenerationSettings(max_new_tokens=6)
    plain = HfBackend(model.backbone, model.processor, device="cpu")
    (free,) = plain.generate(judges()[:1], clips[:1], settings=settings)[0]
    banned = free.token_ids[0]
    blocked = HfBackend(model.backbone, model.processor, device="cpu", suppress_token_ids=(banned,))
    (written,) = blocked.generate(judges()[:1], clips[:1], settings=settings)[0]
    assert banned not in written.token_ids


def test_scoring_flags_truncated_cots(checkpoint, clips):
    scorer = DeScoreReward(checkpoint, use_cot=True, device="cpu", generation={"max_new_tokens": 3})
    videos = [clip.source for clip in clips[:2]]
    written = scorer.score(videos, PROMPTS[:2])
    assert [item.truncated for item in written.items] == [True, True]
    given = scorer.score(videos[:1], PROMPTS[:1], cots=["a given CoT"])
    assert given.items[0].truncated is None
    fast = DeScoreReward(checkpoint, use_cot=False, device="cpu").score(videos[:1], PROMPTS[:1])
    assert fast.items[0].truncated is None


# ----- what the vLLM backend checks, without vLLM --------------------------------------------------------


def test_max_model_len_is_checked_before_sending(model, clips):
    counts = prompt_token_counts(model.processor, judges(), clips)
    longest = max(range(3), key=counts.__getitem__)
    fits = GenerationSettings(backend="vllm", max_new_tokens=8, max_model_len=counts[longest] + 8)
    check_request_lengths(counts, clips, fits)
    tight = dataclasses.replace(fits, max_model_len=counts[longest] + 7)
    with pytest.raises(RequestTooLongError) as refused:
        check_request_lengths(counts, clips, tight)
    message = str(refused.value)
    assert refused.value.video == clips[longest].source and clips[longest].source in message
    assert f"takes {counts[longest]} tokens" in message and f"max_model_len {counts[longest] + 7}" in message


def test_prompt_parity_names_the_video(clips):
    check_prompt_parity([10, 20], [10, 20], clips[:2])
    with pytest.raises(PromptParityError, match=rf"{clips[1].source}: HF 20 tokens, vLLM 21"):
        check_prompt_parity([10, 20], [10, 21], clips[:2])


def test_vllm_request_carries_our_frames_unresampled(model, clips):
    request = vllm_request(model.processor, judges()[0], clips[0])
    frames, metadata = request["multi_modal_data"]["video"]
    assert frames.dtype.name == "uint8" and frames.shape == tuple(clips[0].frames.permute(0, 2, 3, 1).shape)
    assert torch.equal(torch.from_numpy(frames).permute(0, 3, 1, 2).float(), clips[0].frames)
    assert metadata["frames_indices"] == clips[0].frame_indices and metadata["fps"] == clips[0].source_fps
    assert metadata["do_sample_frames"] is False
    assert request["mm_processor_kwargs"] == {"do_sample_frames": False, "do_resize": False}
    assert request["prompt"].count("<|video_pad|>") == 1 and PROMPTS[0] in request["prompt"]


def test_sampling_options_match_the_hf_call():
    greedy = sampling_options(GenerationSettings(), num_generations=8, seed=3, end_ids=(5, 6), suppress_token_ids=(9,))
    assert greedy["n"] == 1 and greedy["temperature"] == 0.0 and greedy["top_k"] == -1
    assert greedy["max_tokens"] == 4096 and greedy["repetition_penalty"] == 1.05
    assert greedy["stop_token_ids"] == [5, 6] and greedy["logit_bias"] == {9: -100.0} and greedy["seed"] == 3
    rollout = GenerationSettings(temperature=1.0, repetition_penalty=1.0)
    assert sampling_options(rollout, num_generations=8, seed=None, end_ids=(5,), suppress_token_ids=())["n"] == 8


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"backend": "sglang"}, r"backend must be one of \('hf', 'vllm'\), got 'sglang'"),
        ({"vllm_mode": "remote"}, r"vllm_mode must be one of \('offline', 'colocate', 'server'\), got 'remote'"),
        ({"backend": "vllm", "vllm_mode": "server"}, "vllm_mode: server needs server_url"),
        ({"max_new_tokens": 4096, "max_model_len": 4096}, r"max_model_len \(4096\) must exceed max_new_tokens"),
        ({"top_k": -1}, "top_k must be >= 0"),
        ({"gpu_memory_utilization": 1.5}, r"gpu_memory_utilization must lie in \(0, 1\]"),
    ],
)
def test_bad_settings_are_refused(fields, message):
    with pytest.raises(ConfigError, match=message):
        GenerationSettings(**fields)


def test_decoding_identity_ignores_engine_resources():
    assert GenerationSettings().max_new_tokens == 4096
    assert GenerationSettings(gpu_memory_utilization=0.5).decoding() == GenerationSettings().decoding()
    assert GenerationSettings(top_p=0.9).decoding() != GenerationSettings().decoding()


def test_vllm_refuses_an_adapter_checkpoint(tiny_qwen3_vl_dir, tmp_path):
    adapter = save_descore(trained_like(tiny_qwen3_vl_dir, TINY_SPEC), tmp_path / "adapter")
    with pytest.raises(CheckpointError, match=r"adapter-format DeScore checkpoint.*descore reward export"):
        check_vllm_folder(adapter)


def test_synced_weights_are_the_merged_export(tiny_qwen3_vl_dir, tmp_path):
    """What sync_weights hands vLLM from a LoRA model equals, name for name, what the merged export holds."""
    model = trained_like(tiny_qwen3_vl_dir, TINY_SPEC)
    with _merged(model.backbone):
        synced = {name: tensor.clone() for name, tensor in backbone_weights(model.backbone)}
    merged = model.merge_lora_().backbone.state_dict()
    assert sorted(synced) == sorted(merged)
    for name, tensor in merged.items():
        torch.testing.assert_close(synced[name], tensor, rtol=0, atol=1e-6, msg=name)


# ----- the vLLM engine (only where vLLM is installed, i.e. on a GPU machine) ------------------------------


@pytest.mark.slow
def test_vllm_matches_hf_prompt_lengths(checkpoint, clips, tmp_path: Path):
    pytest.importorskip("vllm")
    if not torch.cuda.is_available():
        pytest.skip("vLLM needs a GPU")
    model = DeScoreModel.from_pretrained(checkpoint)
    engine = build_backend(GenerationSettings(backend="vllm", max_new_tokens=8, max_model_len=4096,
                                              gpu_memory_utilization=0.3), model=model, model_path=checkpoint)
    result = engine.generate(judges(), clips, settings=engine.settings)  # raises on a prompt-length mismatch
    assert [samples[0].prompt_tokens for samples in result] == prompt_token_counts(model.processor, judges(), clips)
