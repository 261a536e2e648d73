"""Training runs are quiet: two warnings that every run used to print are fixed at their cause.

* GRPO with β > 0 turned the KL term, still attached to the autograd graph, into a float for its statistics
  ("Converting a tensor with requires_grad=True to a scalar"); the KL is now returned detached.
* Online Flow-DPO added a second peft adapter for the reference ("Already found a `peft_config` attribute in
  the model. This will lead to having multiple adapters"); the reference is now a frozen copy of the learner
  LoRA weights that stands in for them in reference forwards.
"""

from __future__ import annotations

import warnings

from generator_rl.flow_dpo import FlowDpoConfig, run_flow_dpo
from generator_rl.grpo import GrpoConfig, run_grpo

from .conftest import PROMPTS
from .helpers import tiny_arguments


def _user_warnings(job, *arguments) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        job(*arguments)
    return [f"{w.filename}:{w.lineno}: {w.message}" for w in caught if issubclass(w.category, UserWarning)]


def test_grpo_with_a_kl_term_warns_nothing(tiny_wan_dir, prompt_file, tmp_path):
    arguments = tiny_arguments("tiny_grpo", GrpoConfig, tiny_wan_dir, prompt_file, tmp_path / "run", max_steps=1,
                               save_steps=1, beta=0.004)
    assert _user_warnings(run_grpo, *arguments) == []


def test_online_flow_dpo_refreshing_its_reference_warns_nothing(tiny_wan_dir, tmp_path):
    """Two rounds of one step each on two prompts: the reference is refreshed once, saved in the step-2
    checkpoint."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS[:2]) + "\n")
    arguments = tiny_arguments("tiny_flow_dpo", FlowDpoConfig, tiny_wan_dir, prompts, tmp_path / "run",
                               max_steps=2, save_steps=2, online_every=1, samples_per_prompt=2)
    assert _user_warnings(run_flow_dpo, *arguments) == []
    assert (tmp_path / "run" / "checkpoints" / "step_2" / "reference_lora.safetensors").is_file()
