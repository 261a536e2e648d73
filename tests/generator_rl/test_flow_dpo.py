"""Flow-DPO on the tiny Wan: the loss starts at log 2 against the base reference, the pair store is resumable
and reusable, online rounds refresh the reference, and the tuned policy scores higher on the sanity reward."""

from __future__ import annotations

import json
import math

import pytest
import torch

import generator_rl.flow_dpo as dpo_module
from generator_rl.flow_dpo import FlowDpoConfig, run_flow_dpo, select_pairs
from generator_rl.pair_store import PairStore
from generator_rl.sample import SampleConfig, run_sample
from reward import build_reward
from reward.errors import ConfigError
from reward.run_record import RunMismatchError

from .conftest import PROMPTS
from .helpers import Preempted, dies_on_call, same_lora, tiny_arguments


def _smoothness(videos) -> float:
    return float(build_reward({"name": "temporal_smoothness"}).score(videos, [""] * len(videos)).rewards.mean())


def test_online_flow_dpo_raises_the_sanity_reward(tiny_wan_dir, prompt_file, tmp_path):
    """The shipped tiny recipe (online, 3 rounds of pairs ranked by temporal smoothness): fresh samples with
    held-out seeds score higher than the base model's; the first step's loss is exactly log 2 (the learner
    starts equal to the reference, LoRA B = 0)."""
    policy, run, dpo = tiny_arguments("tiny_flow_dpo", FlowDpoConfig, tiny_wan_dir, prompt_file, tmp_path / "run")
    result = run_flow_dpo(policy, run, dpo)
    history = result.history
    assert history[0]["train/loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert history[-1]["train/implicit_accuracy"] == 1.0
    store = PairStore(tmp_path / "run" / "pairs")
    assert [len(store.pairs(round_)) for round_ in range(3)] == [len(PROMPTS)] * 3
    base = run_sample(policy, SampleConfig(prompts=str(prompt_file), output_dir=str(tmp_path / "base"), seed=777,
                                              videos_per_prompt=2, device="cpu"))
    tuned = run_sample(policy, SampleConfig(prompts=str(prompt_file), output_dir=str(tmp_path / "tuned"), seed=777,
                                               videos_per_prompt=2, lora=str(result.final), device="cpu"))
    assert _smoothness(tuned) > _smoothness(base) + 0.003


def test_pair_building_resumes_and_is_reused(tiny_wan_dir, prompt_file, tmp_path, monkeypatch):
    """A build killed after two pairs resumes without redoing them; a second run reuses the store as is."""
    original, written = PairStore.add, []

    def dies_after_two(self, *args, **kwargs):
        if len(written) == 2:
            raise KeyboardInterrupt("simulated kill")
        written.append(args[1].prompt_index)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(PairStore, "add", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        run_flow_dpo(*tiny_arguments("tiny_flow_dpo", FlowDpoConfig, tiny_wan_dir, prompt_file, tmp_path / "a",
                                     max_steps=1, pair_dir=tmp_path / "pairs"))
    monkeypatch.setattr(PairStore, "add", original)
    store = PairStore(tmp_path / "pairs")
    assert sorted(store.done_prompts(0)) == [0, 1]
    resumed_indices = []

    def records_index(self, rank, record, **tensors):
        resumed_indices.append(record.prompt_index)
        return original(self, rank, record, **tensors)

    monkeypatch.setattr(PairStore, "add", records_index)
    run_flow_dpo(*tiny_arguments("tiny_flow_dpo", FlowDpoConfig, tiny_wan_dir, prompt_file, tmp_path / "a",
                                 max_steps=1, pair_dir=tmp_path / "pairs"))
    assert resumed_indices == [2, 3]
    records = store.pairs(0)
    assert [r.prompt_index for r in records] == [0, 1, 2, 3] and all(r.winner_reward > r.loser_reward for r in records)
    lines = (tmp_path / "pairs" / "index_rank0.jsonl").read_text().splitlines()
    assert len(lines) == 4 and json.loads(lines[0])["model"] == str(tiny_wan_dir)
    resumed_indices.clear()
    run_flow_dpo(*tiny_arguments("tiny_flow_dpo", FlowDpoConfig, tiny_wan_dir, prompt_file, tmp_path / "b",
                                 max_steps=1, pair_dir=tmp_path / "pairs"))
    assert resumed_indices == []  # the second run trained on the stored pairs
    tensors = store.load(records[0])
    assert set(tensors) == {"winner", "loser", "prompt_embeds"} and tensors["winner"].shape == tuple(records[0].latent_shape)


def test_a_pair_store_of_another_run_is_refused(tiny_wan_dir, prompt_file, tmp_path):
    """A --pair_dir reused with another reward, other sampler settings or another prompt at the same index is
    refused (naming the store and every difference) and left as it was; the same settings reuse it."""
    pair_dir, settings = tmp_path / "pairs", {"max_steps": 1, "samples_per_prompt": 2}
    run_flow_dpo(*tiny_arguments("tiny_flow_dpo", FlowDpoConfig, tiny_wan_dir, prompt_file, tmp_path / "a",
                                 pair_dir=pair_dir, **settings))
    other_prompts = tmp_path / "prompts.txt"
    other_prompts.write_text("\n".join([*PROMPTS[:2], "a cat sleeping", *PROMPTS[3:]]) + "\n")
    cases = [
        (prompt_file, {"rewards": ["name=brightness"]}, "rewards.terms: "),
        (prompt_file, {"guidance_scale": 2.0, "seed": 3},
         "sampling.guidance_scale: 3.0 -> 2.0\n  sampling.seed: 0 -> 3\n"),
        (other_prompts, {}, "prompt 2: 'a dog running on the beach' -> 'a cat sleeping'"),
    ]
    for index, (prompts, overrides, expected) in enumerate(cases):
        with pytest.raises(RunMismatchError) as raised:
            run_flow_dpo(*tiny_arguments("tiny_flow_dpo", FlowDpoConfig, tiny_wan_dir, prompts,
                                         tmp_path / f"other{index}", pair_dir=pair_dir, **settings | overrides))
        assert f"pair store {pair_dir}" in str(raised.value) and expected in str(raised.value)
    assert len(PairStore(pair_dir).pairs(0)) == len(PROMPTS)  # nothing was added to the refused store
    run_flow_dpo(*tiny_arguments("tiny_flow_dpo", FlowDpoConfig, tiny_wan_dir, prompt_file, tmp_path / "b",
                                 pair_dir=pair_dir, learning_rate=0.02, **settings))


def test_select_pairs():
    scores = torch.tensor([0.1, 0.5, float("nan"), 0.3])
    assert select_pairs(scores, mode="best_worst", margin=0.0) == [(1, 0)]
    assert select_pairs(scores, mode="best_worst", margin=0.5) == []
    assert select_pairs(scores, mode="all_above_margin", margin=0.15) == [(1, 0), (1, 3), (3, 0)]
    assert select_pairs(scores, mode="all_above_margin", margin=0.25) == [(1, 0)]
    assert select_pairs(torch.tensor([0.2, float("nan")]), mode="best_worst", margin=0.0) == []
    with pytest.raises(ConfigError, match=r"unknown pair_mode 'top_k'; use one of \['best_worst', 'all_above_margin'\]"):
        select_pairs(scores, mode="top_k", margin=0.0)


def test_flow_dpo_shares_noise_and_timestep_between_winner_and_loser(tiny_wan_dir, monkeypatch):
    from tests.generator_rl.test_policy import tiny_policy_arguments

    policy = tiny_policy_arguments(tiny_wan_dir).load_policy(torch.device("cpu"))
    shape = policy.latent_shape(2, tiny_policy_arguments(tiny_wan_dir).shape)
    batch = {"winner": torch.randn(shape), "loser": torch.randn(shape), "prompt_embeds": torch.randn(2, 16, 32)}
    seen = []
    original = policy.velocity

    def spy(latents, timesteps, *args):
        seen.append((latents.clone(), torch.as_tensor(timesteps).clone()))
        return original(latents, timesteps, *args)

    monkeypatch.setattr(policy, "velocity", spy)
    arguments = FlowDpoConfig(rewards=["name=brightness"], beta=50.0)
    losses, stats = dpo_module.dpo_micro_step(policy, batch, dpo=arguments, shift=1.0,
                                              generator=torch.Generator().manual_seed(0))
    (noised, timesteps), (noised_ref, timesteps_ref) = seen
    assert torch.equal(noised, noised_ref) and torch.equal(timesteps, timesteps_ref)
    assert torch.equal(timesteps[:2], timesteps[2:])
    expected = torch.sigmoid(torch.randn(2, generator=torch.Generator().manual_seed(0))) * 1000  # logit-normal(0, 1)
    torch.testing.assert_close(timesteps[:2], expected)
    sigma = (timesteps[:2] / 1000).view(-1, 1, 1, 1, 1)
    noise_w = (noised[:2] - (1 - sigma) * batch["winner"]) / sigma
    noise_l = (noised[2:] - (1 - sigma) * batch["loser"]) / sigma
    torch.testing.assert_close(noise_w, noise_l, rtol=1e-4, atol=1e-4)
    assert losses.shape == (2,) and losses.tolist() == pytest.approx([math.log(2)] * 2, abs=1e-6)
    assert stats["implicit_accuracy"] == 0.0


def test_shifted_timesteps_follow_the_checkpoint_scheduler(tiny_wan_dir, prompt_file, tmp_path, monkeypatch):
    """shift_timesteps: the shift comes from the loaded scheduler (the tiny Wan's UniPC, flow_shift 3.0), and with
    uniform u the transformer sees t = 1000·3u/(1 + 2u) for u = torch.rand(pairs) of the step's generator."""
    seen = []
    original = dpo_module.dpo_micro_step

    def spy(policy, batch, *, dpo, shift, generator):
        state = generator.get_state()
        u = torch.rand(batch["winner"].shape[0], generator=torch.Generator().set_state(state))
        velocity = policy.velocity

        def record(latents, timesteps, *args):
            seen.append((shift, u, torch.as_tensor(timesteps).clone()))
            return velocity(latents, timesteps, *args)

        monkeypatch.setattr(policy, "velocity", record)
        try:
            return original(policy, batch, dpo=dpo, shift=shift, generator=generator)
        finally:
            monkeypatch.setattr(policy, "velocity", velocity)

    monkeypatch.setattr(dpo_module, "dpo_micro_step", spy)
    result = run_flow_dpo(*tiny_arguments("tiny_flow_dpo", FlowDpoConfig, tiny_wan_dir, prompt_file, tmp_path / "run",
                                          max_steps=1, samples_per_prompt=2, online_every=1, shift_timesteps="true",
                                          timestep_sampling="uniform"))
    shift, u, timesteps = seen[0]
    assert shift == 3.0 and result.resumed_from_step is None and result.final == tmp_path / "run" / "final"
    expected = 1000 * 3 * u / (1 + 2 * u)
    torch.testing.assert_close(timesteps, torch.cat([expected, expected]))


@pytest.mark.parametrize("save_steps", [2, 1], ids=["resume-at-round-boundary", "resume-mid-round"])
def test_killed_flow_dpo_run_resumes_to_the_same_lora(tiny_wan_dir, prompt_file, tmp_path, monkeypatch, save_steps):
    """Online rounds of 2 steps; killed in step 4 after a checkpoint at step 2 (round boundary: the reference
    is refreshed again) or at step 3 (mid-round: the refreshed reference comes back from the checkpoint)."""
    settings = {"max_steps": 5, "save_steps": save_steps, "online_every": 2}
    run_flow_dpo(*tiny_arguments("tiny_flow_dpo", FlowDpoConfig, tiny_wan_dir, prompt_file, tmp_path / "a", **settings))
    original = dpo_module._optimizer_step
    monkeypatch.setattr(dpo_module, "_optimizer_step", dies_on_call(original, 4))
    with pytest.raises(Preempted):
        run_flow_dpo(*tiny_arguments("tiny_flow_dpo", FlowDpoConfig, tiny_wan_dir, prompt_file, tmp_path / "b", **settings))
    monkeypatch.setattr(dpo_module, "_optimizer_step", original)
    run_flow_dpo(*tiny_arguments("tiny_flow_dpo", FlowDpoConfig, tiny_wan_dir, prompt_file, tmp_path / "b", **settings))
    assert same_lora(tmp_path / "a", tmp_path / "b")
