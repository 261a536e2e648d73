"""The step-cost planner (``descore tune plan``): it reproduces every measured GPU point, its counts match a
real Wan on CPU, the command prints and ranks plans, and every shipped preset loads and fits its GPU."""

from __future__ import annotations

import json
import re
import weakref
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from descore.cli import parse_command, run_cli
from descore.commands import COMMANDS
from descore.recipes import resolve_recipe
from generator_rl import planner
from generator_rl.plan_job import workload_from_configs
from generator_rl.policy import LoraSpec
from reward.errors import ConfigError
from reward.gpu_classes import GPUS, gpu_class, usable_gib

from ..conftest import REPO_ROOT

MEASURED = json.loads((REPO_ROOT / "benchmarks/gpu/results/wan_rl_steps_h200_2026-11-26.json").read_text())
PRESETS = sorted((REPO_ROOT / "configs/generator/presets").glob("*.yaml"))
TARGETS = LoraSpec.target_modules


def benchmark_workload(frames: int, algorithm: str) -> planner.Workload:
    """The benchmarked setup (wan_rl_steps): Wan 1.3B, 480x832, CFG, LoRA r32 on attention + FFN, 512 text tokens."""
    return planner.Workload(algorithm, planner.WAN_HUB["1.3B"], 480, 832, frames, 20, True, 512, 32, TARGETS,
                            "bfloat16", planner.text_encoder_params("Wan-AI/Wan2.1-T2V-1.3B-Diffusers"), "bfloat16",
                            videos_per_step=1, trained_steps=1, kl_reference=True)


BATCH_ONE = planner.Settings(gradient_checkpointing=True, vae_tiling=False, vae_slicing=False, rollout_batch_size=1,
                             train_batch_size=1)


def predicted(row: dict) -> tuple[float, float]:
    """(seconds, peak GiB) the planner gives for one measured row."""
    algorithm = "flow-dpo" if row["measurement"].startswith("Flow-DPO") else "grpo"
    e = planner.estimate(benchmark_workload(row["frames"], algorithm), BATCH_ONE, gpu=GPUS["h200"])
    kind = row["measurement"].split(" (")[0]
    return {"rollout step": (e.rollout_step_s, e.peak_gib["rollout"]),
            "GRPO train step": (e.train_micro_step_s, e.peak_gib["training"]),
            "Flow-DPO micro-step": (e.train_micro_step_s, e.peak_gib["training"]),
            "VAE decode": (e.decode_s, e.peak_gib["VAE decode"])}[kind]


@pytest.mark.parametrize("row", MEASURED["rows"], ids=lambda row: f"{row['frames']}f-{row['measurement'].split(' (')[0]}")
def test_reproduces_every_measured_h200_point(row):
    seconds, peak = predicted(row)
    assert seconds == pytest.approx(row["seconds"], rel=0.15)
    assert peak == pytest.approx(row["peak_gib"], rel=0.15)


def test_hub_constants_give_the_benchmarked_parameter_count():
    assert planner.wan_architecture("Wan-AI/Wan2.1-T2V-1.3B-Diffusers").params() == MEASURED["transformer_params"]
    assert planner.text_encoder_params("Wan-AI/Wan2.1-T2V-14B-Diffusers") == 5_680_910_336  # UMT5-XXL encoder


class PeakTensorBytes(TorchDispatchMode):
    """Exact peak of live CPU tensor storage bytes allocated inside the mode (each storage counted once, freed by
    a finalizer when its last tensor dies)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self.seen: set[int] = set()

    def _release(self, key: int, nbytes: int) -> None:
        self.seen.discard(key)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor) and (storage := tensor.untyped_storage()).nbytes():
                if id(storage) not in self.seen:
                    self.seen.add(id(storage))
                    self.live += storage.nbytes()
                    weakref.finalize(storage, self._release, id(storage), storage.nbytes())
        self.peak = max(self.peak, self.live)
        return out


SMALL = dict(num_layers=2, num_attention_heads=4, attention_head_dim=32, ffn_dim=768, text_dim=64)


@pytest.fixture(scope="module")
def small_wan():
    """A small float32 Wan (d = 128, FFN 6d as in 1.3B) with LoRA r4 on the kit's targets, base frozen."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    model = WanTransformer3DModel(**SMALL, patch_size=(1, 2, 2), in_channels=16, out_channels=16, freq_dim=256)
    model.requires_grad_(False)
    model.add_adapter(LoraSpec(rank=4, alpha=8).peft_config())
    return model


def small_workload() -> planner.Workload:
    return planner.Workload("grpo", planner.WanArch(**SMALL), 256, 256, 17, 2, True, 16, 4, TARGETS, "float32", 0,
                            "float32", videos_per_step=2, trained_steps=1, kl_reference=False)


def small_inputs(work: planner.Workload) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    latents = torch.randn(2, 16, (work.num_frames - 1) // 4 + 1, work.height // 8, work.width // 8)
    return latents, torch.tensor([500.0, 500.0]), torch.randn(2, work.text_tokens, SMALL["text_dim"])


def test_counts_and_flops_match_a_real_wan(small_wan):
    """Parameters and LoRA parameters exactly; matmul FLOPs (FlopCounterMode, attention as plain matmuls) to 0.1 %."""
    work = small_workload()
    lora = sum(p.numel() for name, p in small_wan.named_parameters() if "lora_" in name)
    assert sum(p.numel() for p in small_wan.parameters()) - lora == work.arch.params()
    assert lora == work.arch.lora_params(4, TARGETS)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        small_wan(*small_inputs(work), return_dict=False)
    assert work.forward_flops(2) == pytest.approx(counter.get_total_flops(), rel=1e-3)


@pytest.mark.parametrize("phase", ["inference", "checkpointed backward", "backward"])
def test_activation_memory_is_conservative_on_cpu(small_wan, phase):
    """Peak tensor bytes of a real forward (+ backward) of 2 videos x 1,280 tokens against the planner's
    activation term. Tolerance: the planner may not under-estimate, and over-estimates by at most 50 %. Its
    per-block constants were fitted in bf16 on CUDA, where Wan's float32 norm and modulation intermediates
    weigh double relative to the bf16 activations; in float32 on CPU they do not, so the planner errs high —
    the safe side for "does it fit"."""
    work = small_workload()
    latents, timesteps, text = small_inputs(work)
    block, tokens = work.arch.block_activation_bytes(4), work.tokens * 2
    small_wan.disable_gradient_checkpointing()
    if phase == "inference":
        planned = planner.INFERENCE_LIVE_BLOCKS * block * tokens
    elif phase == "checkpointed backward":
        small_wan.enable_gradient_checkpointing()
        planned = (SMALL["num_layers"] * work.arch.width * 4 + planner.BACKWARD_LIVE_BLOCKS * block) * tokens
    else:
        planned = (SMALL["num_layers"] + planner.BACKWARD_LIVE_BLOCKS - 1) * block * tokens
    tracker = PeakTensorBytes()
    with torch.set_grad_enabled(phase != "inference"), tracker:
        out = small_wan(latents, timesteps, text, return_dict=False)[0]
        if phase != "inference":
            out.pow(2).mean().backward()
        del out
    small_wan.zero_grad(set_to_none=True)
    small_wan.disable_gradient_checkpointing()
    assert 1.0 <= planned / tracker.peak <= 1.5, (planned, tracker.peak)


def test_fitting_settings_are_ranked_and_the_recipe_is_estimated():
    work = replace(benchmark_workload(33, "grpo"), videos_per_step=64, trained_steps=19)
    recipe = replace(BATCH_ONE, rollout_batch_size=4, train_batch_size=2)
    plan = planner.make_plan(work, recipe, gpu=GPUS["l40s"], gpus=8)
    times = [e.optimizer_step_s for e in plan.fitting]
    assert times == sorted(times) and all(e.peak <= usable_gib(plan.gpu) for e in plan.fitting)
    # Independent arithmetic of one GRPO step: 8 videos per GPU in 2 batches of 4 (20 calls + a decode each),
    # 8 x 19 trained timesteps in micro-batches of 2.
    e = plan.recipe
    assert e.optimizer_step_s == pytest.approx(2 * (20 * e.rollout_step_s + e.decode_s) + 76 * e.train_micro_step_s)
    assert e.decode_s > planner.estimate(work, recipe, gpu=GPUS["h200"]).decode_s * 4.8 / 0.864 * 0.999


def test_a_recipe_that_fits_nowhere_says_what_dominates():
    work = replace(benchmark_workload(81, "grpo"), arch=planner.WAN_HUB["14B"], text_encoder_dtype="float32",
                   height=720, width=1280)
    with pytest.raises(ConfigError, match=r"no setting fits 1 x 4090 \(22.0 GiB usable each\): the smallest peak is "
                                          r"[\d.]+ GiB, in training, with 29.4 GiB of weights, LoRA state and reward "
                                          r"models; fewer frames or pixels"):
        planner.make_plan(work, BATCH_ONE, gpu=GPUS["4090"])
    # Wan 1.3B with a float32 UMT5 (5.68 B x 4 bytes = 21.2 GiB) and an 8B reward beside it: both are named.
    work = replace(benchmark_workload(33, "grpo"), text_encoder_dtype="float32", reward_gib=17.9)
    with pytest.raises(ConfigError, match=r"in prompt encoding \(UMT5 resident\).*the reward models take 17.9 GiB: "
                                          r"serve them .*; UMT5 takes 21.2 GiB while prompts are encoded; else fewer"):
        planner.make_plan(work, BATCH_ONE, gpu=GPUS["4090"])
    with pytest.raises(ConfigError, match="unknown gpu 'v100'; choose from h200, h100-80gb, a100-80gb, l40s, 4090"):
        gpu_class("v100")


def test_plan_command_prints_the_table_and_json(capsys):
    argv = ["--config", "grpo_wan1.3b", "--gpu", "h100-80gb", "--gpus", "8", "--num_frames", "81"]
    assert run_cli(["tune", "plan", *argv]) == 0
    table = capsys.readouterr().out
    assert "8 x h100-80gb" in table and "32,760 tokens" in table and "EXTRAPOLATED" in table
    assert re.search(r"^rec .*--rollout_batch_size 4 --train_batch_size 2 .*the recipe as written", table, re.M)
    assert re.search(r"^1 +[\d.]+ .*--gradient_checkpointing", table, re.M)
    assert run_cli(["tune", "plan", *argv, "--json", "true"]) == 0
    record = json.loads(capsys.readouterr().out)
    policy, grpo, config = parse_command(COMMANDS[("tune", "plan")], argv, prog="descore tune plan")
    work, recipe = workload_from_configs(policy, grpo, "grpo")
    expected = planner.estimate(work, recipe, gpu=GPUS["h100-80gb"], gpus=8)
    assert (work.num_frames, work.videos_per_step, work.trained_steps) == (81, 64, 19)
    assert record["recipe"]["optimizer_step_s"] == round(expected.optimizer_step_s, 1)
    assert record["recipe"]["peak_gib"] == round(expected.peak, 2) and not record["measured_gpu"]


def test_a_descore_reward_on_the_same_gpu_is_in_the_peak():
    """grpo_wan1.3b scores with descore_no_cot (batch 8) on each GPU. Its 33 frames last 2.06 s at 16 fps: 4 frames
    at 2 fps (the contract's minimum), 320x576 each -> 2 x 10 x 18 = 360 video tokens + 695 prompt tokens."""
    from reward.planner import HUB, QWEN3_VL_8B, score_estimate

    argv = ["--config", "grpo_wan1.3b", "--gpu", "h200"]
    work, _ = workload_from_configs(*parse_command(COMMANDS[("tune", "plan")], argv, prog="x")[:2], "grpo")
    expected = score_estimate(HUB[QWEN3_VL_8B], GPUS["h200"], batch=8, tokens=360 + 695).peak_gib
    assert work.reward_gib == pytest.approx(expected) and "Qwen3-VL-8B assumed" in work.reward_notes[0]
    cheap, _ = workload_from_configs(*parse_command(COMMANDS[("tune", "plan")], [*argv, "--rewards",
                                                    "name=brightness,weight=1"], prog="x")[:2], "grpo")
    assert cheap.reward_gib == 0 and cheap.reward_notes == ("brightness: not modelled, counted as 0",)
    gap = planner.estimate(work, BATCH_ONE, gpu=GPUS["h200"]).peak - planner.estimate(cheap, BATCH_ONE, gpu=GPUS["h200"]).peak
    assert gap == pytest.approx(expected)


def test_flow_dpo_recipes_plan_with_their_algorithm(capsys):
    """A Flow-DPO recipe is recognised by its keys; --algorithm overrides, and then its keys are unknown to GRPO."""
    for flags in ([], ["--algorithm", "flow-dpo"]):
        assert run_cli(["tune", "plan", "--config", "flow_dpo_wan1.3b", *flags, "--gpu", "h200"]) == 0
        table = capsys.readouterr().out
        assert "flow-dpo plan" in table and "pair sampling:" in table and "calibrated on this GPU class" in table
    assert run_cli(["tune", "plan", "--config", "tiny_grpo"]) == 0 and "grpo plan" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="unknown option.*samples_per_prompt"):
        run_cli(["tune", "plan", "--config", "flow_dpo_wan1.3b", "--algorithm", "grpo"])


def preset_target(path: Path) -> tuple[str, int]:
    """(GPU class, GPU count) a preset is made for: its name and its header's planning command."""
    match = re.search(r"descore tune plan --config \S+ --gpu (\S+) --gpus (\d+)", path.read_text())
    assert match and match.group(1) in path.stem, f"{path.name}: header lacks its planning command"
    return match.group(1), int(match.group(2))


@pytest.mark.parametrize("preset", PRESETS, ids=[path.stem for path in PRESETS])
def test_presets_load_through_the_normal_path_and_fit(preset, tmp_path):
    (prompts := tmp_path / "prompts.txt").write_text("a prompt\n")
    assert resolve_recipe(preset.stem) == preset
    policy, _run, grpo, _eval = parse_command(COMMANDS[("tune", "grpo")], ["--config", preset.stem, "--prompts",
                                                                            str(prompts)], prog="descore tune grpo")
    gpu, gpus = preset_target(preset)
    header = preset.read_text().split("\nmodel:")[0]
    assert ("PLANNED, not measured" in header) and (("measured 1.3B points" in header) == (gpu == "h200" and "1.3b" in preset.stem))
    work, settings = workload_from_configs(policy, grpo, "grpo")
    settings = replace(settings, fsdp="fsdp_wan_8gpu.yaml" in header)
    assert planner.estimate(work, settings, gpu=GPUS[gpu], gpus=gpus).peak <= usable_gib(GPUS[gpu])
