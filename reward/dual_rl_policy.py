"""DeScore stage 2, the model side: the trained policy (a stage-1 DeScore model), its frozen reference, the
optimizer, and the token ids rollouts and sequences need."""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .dual_rl_config import DualRlConfig
from .generation import end_token_ids
from .modeling import DeScoreModel, LoraSettings, pixel_factor, upcast_trainable_

logger = logging.getLogger(__name__)


@dataclass
class Policy:
    """The trained DeScore model, its frozen reference and what the optimizer steps."""

    model: DeScoreModel
    reference: torch.nn.Module | None  # frozen copy of the initial backbone (full); None with LoRA (adapters off)
    parameters: dict[str, torch.nn.Parameter]  # trained tensors by name ("head.weight" included)

    @contextmanager
    def reference_mode(self) -> Iterator[torch.nn.Module]:
        """The backbone that computes reference log-probs: the frozen copy, or the policy with LoRA disabled."""
        if self.reference is not None:
            yield self.reference
        else:
            with self.model.backbone.disable_adapter():
                yield self.model.backbone


def load_policy(config: DualRlConfig, device: torch.device) -> Policy:
    """The stage-1 checkpoint (LoRA merged in), trained in full (the LLM, vision tower frozen) or through a
    fresh LoRA; the head always. Trained tensors are float32, the rest stays in ``torch_dtype``."""
    model = DeScoreModel.from_pretrained(config.model_name_or_path, dtype=config.torch_dtype,
                                         attn_implementation=config.attn_implementation).merge_lora_()
    if model.cot_placement != "assistant":
        logger.warning("%s scores with the CoT in the user turn; stage 2 trains the head on CoTs in the assistant "
                       "turn (as the official stage 2), so the result is saved with cot_placement 'assistant'",
                       config.model_name_or_path)
        model.cot_placement = "assistant"
    model.video_spec = config.video_spec(pixel_factor(model.processor))
    backbone = model.backbone
    backbone.requires_grad_(False)
    reference = None
    if config.adaptation == "full":
        reference = copy.deepcopy(backbone).eval()
        for name, parameter in backbone.named_parameters():
            parameter.requires_grad_(not _is_vision(name))
    else:
        from peft import get_peft_model

        lora = LoraSettings(r=config.lora_rank, alpha=config.lora_alpha, dropout=config.lora_dropout,
                            target_modules=config.lora_target_modules, full_modules=())
        model.backbone = get_peft_model(backbone, lora.peft_config(model.reward_token_id))  # LoRA + <Reward> row
    upcast_trainable_(model)
    if config.activation_checkpointing:
        model.activation_checkpointing_enable()
    model.to(device).train()
    if reference is not None:
        reference.to(device)
    parameters = {name: parameter for name, parameter in model.named_parameters() if parameter.requires_grad}
    return Policy(model, reference, parameters)


def _is_vision(name: str) -> bool:
    return ".visual." in f".{name}"


def new_optimizer(config: DualRlConfig, policy: Policy) -> torch.optim.AdamW:
    """One AdamW over the LLM (or LoRA) weights and the head, the head in its own group (own lr if set)."""
    head = [policy.parameters["head.weight"]]
    llm = [parameter for name, parameter in policy.parameters.items() if name != "head.weight"]
    head_lr = config.head_learning_rate if config.head_learning_rate is not None else config.learning_rate
    return torch.optim.AdamW([{"params": llm}, {"params": head, "lr": head_lr}], lr=config.learning_rate,
                             betas=(config.adam_beta1, config.adam_beta2), weight_decay=config.weight_decay, eps=1e-8)


def suppressed_token_ids(model: DeScoreModel) -> tuple[int, ...]:
    """Tokens a rollout must never sample: ``<Reward>`` (the head's query) and the image / video placeholders
    and their delimiters (a sampled ``<|video_pad|>`` would ask the training forward for a video that is not
    there)."""
    processor = model.processor
    names = [getattr(processor, name, None) for name in ("image_token", "video_token", "vision_start_token",
                                                         "vision_end_token")]
    ids = processor.tokenizer.convert_tokens_to_ids([name for name in names if name])
    return (model.reward_token_id, *(i for i in ids if i is not None and i != processor.tokenizer.unk_token_id))


def response_end_ids(model: DeScoreModel) -> tuple[int, ...]:
    return end_token_ids(getattr(model.backbone, "generation_config", None), model.processor)


def pad_token_id(model: DeScoreModel) -> int:
    return model.processor.tokenizer.pad_token_id
