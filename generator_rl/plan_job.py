"""``descore tune plan``: the planner of generator_rl/planner.py run on a GRPO or Flow-DPO recipe, and its report."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from reward.errors import ConfigError
from reward.gpu_classes import GPUS, gpu_class, usable_gib
from reward.planner import reward_term_gib

from .planner import CALIBRATION_GPU, Estimate, Plan, Settings, Workload, make_plan, text_encoder_params, wan_architecture


@dataclass
class PlanConfig:
    """Where to plan for. The recipe (--config, flags) supplies the model, video size and batch settings."""

    algorithm: Literal["grpo", "flow-dpo"] = field(
        default="grpo", metadata={"help": "The recipe's job: grpo or flow-dpo. Without it, a recipe holding "
                                          "samples_per_prompt or pair_mode is planned as Flow-DPO, any other as GRPO."})
    gpu: str = field(default="h200", metadata={"help": f"GPU class: {', '.join(GPUS)}. Only {CALIBRATION_GPU} "
                                                       "(Wan 1.3B) is measured; the others are extrapolated."})
    gpus: int = field(default=1, metadata={"help": "GPUs per run (FSDP shards the frozen base across them)."})
    top: int = field(default=8, metadata={"help": "Fitting settings to list, fastest first."})
    json: bool = field(default=False, metadata={"help": "Print the plan as JSON instead of a table."})

    def __post_init__(self) -> None:
        gpu_class(self.gpu)
        if self.algorithm not in ("grpo", "flow-dpo"):
            raise ConfigError(f"algorithm must be grpo or flow-dpo, got {self.algorithm!r}")
        if self.gpus < 1 or self.top < 1:
            raise ConfigError(f"gpus and top must be >= 1, got {self.gpus} and {self.top}")


def workload_from_configs(policy: Any, algo: Any, algorithm: str) -> tuple[Workload, Settings]:
    """The workload and the recipe's own settings from a PolicyConfig and a GrpoConfig / FlowDpoConfig."""
    if algorithm == "grpo":
        stochastic = policy.num_steps - 1
        trained = algo.sde_window or max(1, round(stochastic * algo.train_fraction))
        sizes = dict(videos_per_step=algo.prompts_per_step * algo.group_size, trained_steps=trained,
                     kl_reference=algo.beta > 0)
        rollout_batch = algo.rollout_batch_size
    else:
        sizes = dict(videos_per_step=algo.samples_per_prompt, trained_steps=1, kl_reference=True,
                     accumulation=algo.gradient_accumulation_steps)
        rollout_batch = algo.samples_per_prompt
    work = Workload(algorithm, wan_architecture(policy.model), policy.height, policy.width, policy.num_frames,
                    policy.num_steps, policy.guidance_scale > 1, policy.max_sequence_length, policy.lora_rank,
                    tuple(policy.lora_target_modules), policy.transformer_dtype, text_encoder_params(policy.model),
                    policy.text_encoder_dtype, **sizes)
    recipe = Settings(policy.gradient_checkpointing, policy.vae_tiling, policy.vae_slicing, rollout_batch,
                      algo.train_batch_size)
    counted = reward_memory(algo.rewards or [], policy)
    return replace(work, reward_gib=sum(gib for gib, _ in counted), reward_notes=tuple(note for _, note in counted)), recipe


def reward_memory(terms: list, policy: Any) -> list[tuple[float, str]]:
    """(GiB, description) of every reward term on the training GPU; terms the planner does not model count 0
    and say so (a remote reward needs no memory here)."""
    counted = []
    for term in terms:
        entry = term.to_dict()
        found = reward_term_gib(entry, num_frames=policy.num_frames, height=policy.height, width=policy.width)
        if entry["name"] == "remote":
            found = (0.0, "remote: scored on the reward server's GPUs")
        counted.append(found or (0.0, f"{entry['name']}: not modelled, counted as 0"))
    return counted


def run_plan(policy: Any, algo: Any, config: PlanConfig) -> Plan | str:
    """``descore tune plan``: the plan (the table report prints it), or its JSON when --json."""
    from .grpo import GrpoConfig  # loaded already: the command parsed the recipe with it or FlowDpoConfig

    work, recipe = workload_from_configs(policy, algo, "grpo" if isinstance(algo, GrpoConfig) else "flow-dpo")
    plan = make_plan(work, recipe, gpu=gpu_class(config.gpu), gpus=config.gpus)
    plan = replace(plan, fitting=plan.fitting[: config.top])
    return json.dumps(plan_record(plan), indent=2) if config.json else plan


def plan_record(plan: Plan) -> dict[str, Any]:
    """The plan as plain data (the --json output)."""
    return {"gpu": asdict(plan.gpu), "gpus": plan.gpus, "measured_gpu": plan.measured,
            "algorithm": plan.workload.algorithm, "video_tokens": plan.workload.tokens,
            "recipe": _estimate_record(plan.recipe, plan), "fitting": [_estimate_record(e, plan) for e in plan.fitting]}


def _estimate_record(e: Estimate, plan: Plan) -> dict[str, Any]:
    return {"settings": asdict(e.settings), "flags": e.settings.flags(plan.workload.algorithm),
            "peak_gib": round(e.peak, 2), "peak_by_phase_gib": {k: round(v, 2) for k, v in e.peak_gib.items()},
            "fits": e.peak <= usable_gib(plan.gpu), "rollout_step_s": round(e.rollout_step_s, 3),
            "decode_s": round(e.decode_s, 3), "train_micro_step_s": round(e.train_micro_step_s, 3),
            "optimizer_step_s": round(e.optimizer_step_s, 1)}


def _per_gpu(plan: Plan) -> str:
    work = plan.workload
    if work.algorithm == "grpo":
        return (f"{math.ceil(work.videos_per_step / plan.gpus)} videos per GPU per step, {work.trained_steps} "
                "trained timesteps each")
    return f"{work.accumulation} micro-step(s) per optimizer step, {work.videos_per_step} samples per prompt"


def format_plan(plan: Plan | str) -> str:
    """The plan as the command's report: what was estimated, the recipe's row, the ranked settings."""
    if isinstance(plan, str):
        return plan
    work, gpu = plan.workload, plan.gpu
    source = ("calibrated on this GPU class (H200, Wan 1.3B measurements; other models and settings are still "
              "estimates)" if plan.measured else
              f"EXTRAPOLATED from H200 measurements by bf16 peak ({gpu.bf16_tflops:.0f} vs 989 TFLOP/s) and HBM "
              "bandwidth: not measured")
    step = "optimizer step (pairs given)" if work.algorithm == "flow-dpo" else "optimizer step"
    lines = [f"{work.algorithm} plan: {plan.gpus} x {gpu.name} ({usable_gib(gpu):.1f} GiB usable each), "
             f"{work.arch.params():,} parameters in the transformer, {work.num_frames} frames {work.height}x{work.width} = "
             f"{work.tokens:,} tokens, {_per_gpu(plan)}", f"numbers: {source}", "",
             f"{'':<3} {'peak GiB':>8} {'rollout s':>9} {'decode s':>8} {'train s':>8} {step + ' s':>14}  flags"]

    def row(label: str, e: Estimate) -> str:
        return (f"{label:<3} {e.peak:>8.1f} {e.rollout_step_s:>9.2f} {e.decode_s:>8.2f} {e.train_micro_step_s:>8.2f} "
                f"{e.optimizer_step_s:>14.1f}  {e.settings.flags(work.algorithm)}")

    fits = "fits" if plan.recipe.peak <= usable_gib(gpu) else f"does NOT fit: {plan.recipe.dominant()} dominates"
    lines.append(row("rec", plan.recipe) + f"   <- the recipe as written ({fits})")
    lines += [row(str(rank), e) for rank, e in enumerate(plan.fitting, 1)]
    if work.algorithm == "flow-dpo":
        lines.append(f"\npair sampling: {plan.recipe.pair_sampling_s:.1f} s per prompt ({work.videos_per_step} "
                     "videos, decode included) before training, and again at each online round")
    lines.append("\nrollout s: one guided transformer call over a rollout batch; train s: one train micro-batch; "
                 "reward scoring time and FSDP communication are not included.")
    if work.reward_notes:
        lines.append("reward models held on each GPU (in the peaks): " + "; ".join(work.reward_notes))
    return "\n".join(lines)
