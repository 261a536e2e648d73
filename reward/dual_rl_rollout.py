"""DeScore stage 2, the sequences: rollouts of one video, the two token sequences each rollout is trained on,
and the two forwards over them.

Every sequence is built from token ids (the prompt's ids + the sampled ids), never by re-tokenising decoded
text, so the trained tokens are exactly the sampled ones:

* the policy sequence ``prompt + response`` gives the response's token log-probabilities (PPO-clip and KL);
* the reward sequence ``prompt + response[:-1] + <Reward> + response[-1]`` — ``<Reward>`` goes before the
  final end token, as the official ``vllm_rollout_spmd.py`` rewrites rollouts (a truncated response, which
  has no end token, gets ``<Reward>`` appended) — gives the head reward through :class:`DeScoreModel`'s
  forward, hidden state not detached, so the BT loss reaches the LLM and the head.

The prompt is the single-video judge turn of :func:`reward.inputs.generation_text`; the CoT is the assistant's
answer, the ``assistant`` placement (stage 2 of the official code).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import ProcessorMixin
from trl.trainer.utils import selective_log_softmax

from .generation import Generation
from .inputs import encode, generation_text
from .modeling import DeScoreModel, multimodal_core
from .prompts import JudgeText
from .rollout_rewards import RolloutReward
from .video import SampledVideo

# Per-token processor outputs besides input_ids / attention_mask (padded with 0 like the mask).
_TOKEN_KEYS = ("mm_token_type_ids", "token_type_ids")


@dataclass(frozen=True)
class PromptInputs:
    """The encoded judge prompt of one video (batch of one): ids, mask, per-token extras and the video tensors."""

    input_ids: torch.Tensor  # (L,)
    token_extras: dict[str, torch.Tensor]  # each (L,)
    visual: dict[str, torch.Tensor]  # pixel_values_videos (N, D), video_grid_thw (1, 3), ...

    @classmethod
    def encode(cls, processor: ProcessorMixin, judge: JudgeText, video: SampledVideo) -> PromptInputs:
        batch = encode(processor, [generation_text(processor, judge)], [video])
        token_extras = {key: batch[key][0] for key in _TOKEN_KEYS if key in batch}
        visual = {key: value for key, value in batch.items()
                  if key not in ("input_ids", "attention_mask", *_TOKEN_KEYS)}
        return cls(batch["input_ids"][0], token_extras, visual)


@dataclass
class VideoRollouts:
    """The G rollouts of one video of a step and what was computed for them."""

    video_id: int  # 2·(pair position in the step) + (0: video A, 1: video B)
    prompt: PromptInputs
    generations: list[Generation]
    rewards: list[RolloutReward]


@dataclass(frozen=True)
class SequenceBatch:
    """Right-padded sequences of one forward: the model inputs and where the response tokens sit."""

    inputs: dict[str, torch.Tensor]
    response_ids: torch.Tensor  # (B, T) the sampled ids, 0 on padding
    response_mask: torch.Tensor  # (B, T) 1 on real response tokens
    logit_positions: torch.Tensor  # (B, T) index of the hidden state that predicts each response token

    def to(self, device: torch.device) -> SequenceBatch:
        return SequenceBatch({key: value.to(device) for key, value in self.inputs.items()},
                             self.response_ids.to(device), self.response_mask.to(device),
                             self.logit_positions.to(device))


def reward_response(token_ids: Sequence[int], *, reward_token_id: int, end_token_ids: Sequence[int]) -> list[int]:
    """The response with ``<Reward>`` inserted before its final end token, or appended when it has none."""
    ids = list(token_ids)
    if ids and ids[-1] in end_token_ids:
        return [*ids[:-1], reward_token_id, ids[-1]]
    return [*ids, reward_token_id]


def sequence_batch(items: Sequence[tuple[PromptInputs, Sequence[int]]], *, pad_token_id: int) -> SequenceBatch:
    """Concatenate each prompt with its response ids and right-pad the batch; the videos are stacked in row
    order, so row b's video placeholder gets video b."""
    rows = [torch.cat([prompt.input_ids, torch.tensor(list(response), dtype=torch.long)]) for prompt, response in items]
    length = max(len(row) for row in rows)
    longest_response = max(max(len(response) for _, response in items), 1)
    input_ids = torch.full((len(rows), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    response_ids = torch.zeros((len(rows), longest_response), dtype=torch.long)
    response_mask = torch.zeros((len(rows), longest_response), dtype=torch.long)
    logit_positions = torch.zeros((len(rows), longest_response), dtype=torch.long)
    extras = {key: torch.zeros((len(rows), length), dtype=value.dtype) for key, value in items[0][0].token_extras.items()}
    for row, ((prompt, response), ids) in enumerate(zip(items, rows)):
        input_ids[row, : len(ids)] = ids
        attention_mask[row, : len(ids)] = 1
        for key, value in prompt.token_extras.items():
            extras[key][row, : len(value)] = value
        count, start = len(response), len(prompt.input_ids)
        response_ids[row, :count] = torch.tensor(list(response), dtype=torch.long)
        response_mask[row, :count] = 1
        logit_positions[row, :count] = torch.arange(start - 1, start - 1 + count)
    visual = {key: torch.cat([prompt.visual[key] for prompt, _ in items]) for key in items[0][0].visual}
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, **extras, **visual}
    return SequenceBatch(inputs, response_ids, response_mask, logit_positions)


def response_log_probs(backbone: torch.nn.Module, batch: SequenceBatch, *, temperature: float) -> torch.Tensor:
    """log π(token) of every response token (B, T), float32, 0 on padding.

    Only the response positions go through the LM head (the prompt's logits are never built: at 8B with a
    ~150k vocabulary they would dominate memory); logits are divided by the sampling temperature, as the
    official actor does, so the ratio compares the distribution the rollouts were drawn from. trl's
    ``selective_log_softmax`` gathers the sampled tokens' log-probabilities without materialising a
    (B, T, V) log-softmax.
    """
    hidden = multimodal_core(backbone)(**batch.inputs, use_cache=False).last_hidden_state
    index = batch.logit_positions[..., None].expand(-1, -1, hidden.shape[-1])
    logits = backbone.get_output_embeddings()(hidden.gather(1, index)).float() / temperature
    return selective_log_softmax(logits, batch.response_ids) * batch.response_mask


def head_rewards(model: DeScoreModel, batch: SequenceBatch) -> torch.Tensor:
    """Head rewards (B,) of reward sequences (one ``<Reward>`` each), with gradients to the LLM and the head."""
    return model(**batch.inputs)
