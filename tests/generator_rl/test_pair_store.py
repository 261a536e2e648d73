"""The pair store knows what its pairs are: a new store records its settings, a reused one must match the run's
settings and prompts, and a mismatch is refused with the differences and the store's folder."""

from __future__ import annotations

import json

import pytest
import torch

from generator_rl.pair_store import MANIFEST, PairRecord, PairStore
from reward.errors import CheckpointError
from reward.run_record import RunMismatchError

SETTINGS = {
    "sampling": {"model": "/models/wan", "num_steps": 6, "guidance_scale": 3.0, "seed": 0},
    "pairs": {"samples_per_prompt": 8, "pair_mode": "best_worst", "pair_margin": 0.0},
    "rewards": {"terms": [{"name": "temporal_smoothness", "weight": 1.0, "label": "temporal_smoothness"}]},
}
PROMPTS = ["a red square", "a blue ball", "a dog"]


def _add_pair(store: PairStore, prompt_index: int, prompt: str) -> None:
    record = PairRecord(round=0, prompt_index=prompt_index, prompt=prompt, file=f"pairs/0_{prompt_index}_0.safetensors",
                        winner_reward=1.0, loser_reward=0.0, model="/models/wan", latent_shape=[2])
    store.add(0, record, winner=torch.ones(2), loser=torch.zeros(2), prompt_embeds=torch.zeros(1, 2))


def test_a_new_store_records_its_settings_and_the_same_run_reuses_it(tmp_path):
    store = PairStore.for_run(tmp_path / "pairs", settings=SETTINGS, prompts=PROMPTS)
    _add_pair(store, 1, PROMPTS[1])
    assert json.loads((tmp_path / "pairs" / MANIFEST).read_text())["config"] == SETTINGS
    again = PairStore.for_run(tmp_path / "pairs", settings=SETTINGS, prompts=[*PROMPTS, "a new prompt at the end"])
    assert [record.prompt for record in again.pairs(0)] == ["a blue ball"]


@pytest.mark.parametrize(
    ("group", "name", "value", "line"),
    [
        ("sampling", "guidance_scale", 4.5, "sampling.guidance_scale: 3.0 -> 4.5"),
        ("sampling", "model", "/models/other", "sampling.model: /models/wan -> /models/other"),
        ("pairs", "pair_mode", "all_above_margin", "pairs.pair_mode: best_worst -> all_above_margin"),
        ("rewards", "terms", [{"name": "brightness", "weight": 1.0, "label": "brightness"}], "rewards.terms: "),
    ],
)
def test_other_settings_are_refused_with_the_differences(tmp_path, group, name, value, line):
    _add_pair(PairStore.for_run(tmp_path / "pairs", settings=SETTINGS, prompts=PROMPTS), 0, PROMPTS[0])
    changed = {key: dict(values) for key, values in SETTINGS.items()}
    changed[group][name] = value
    with pytest.raises(RunMismatchError) as raised:
        PairStore.for_run(tmp_path / "pairs", settings=changed, prompts=PROMPTS)
    message = str(raised.value)
    assert f"pair store {tmp_path / 'pairs'} was made with other settings" in message and line in message
    assert message.count("->") == 1  # only the changed field is listed


def test_changed_or_missing_prompts_are_refused(tmp_path):
    store = PairStore.for_run(tmp_path / "pairs", settings=SETTINGS, prompts=PROMPTS)
    for index, prompt in enumerate(PROMPTS):
        _add_pair(store, index, prompt)
    with pytest.raises(RunMismatchError) as raised:
        PairStore.for_run(tmp_path / "pairs", settings=SETTINGS, prompts=["a red square", "a green ball"])
    message = str(raised.value)
    assert f"pair store {tmp_path / 'pairs'} holds pairs of other prompts" in message
    assert "prompt 1: 'a blue ball' -> 'a green ball'" in message and "prompt 2: 'a dog' -> '<absent>'" in message
    assert "prompt 0" not in message


def test_a_store_without_its_settings_is_refused(tmp_path):
    """A store with pairs but no store.json (written before stores recorded settings) cannot be checked."""
    _add_pair(PairStore(tmp_path / "pairs"), 0, PROMPTS[0])
    with pytest.raises(RunMismatchError, match=f"pair store {tmp_path / 'pairs'} has pairs but no {MANIFEST}"):
        PairStore.for_run(tmp_path / "pairs", settings=SETTINGS, prompts=PROMPTS)


def test_an_unreadable_store_record_is_named(tmp_path):
    (tmp_path / "pairs").mkdir()
    (tmp_path / "pairs" / MANIFEST).write_text("{not json")
    with pytest.raises(CheckpointError, match=f"{tmp_path / 'pairs' / MANIFEST} is not a pair-store record"):
        PairStore.for_run(tmp_path / "pairs", settings=SETTINGS, prompts=PROMPTS)


def test_online_training_settings_count_once_the_store_holds_later_rounds(tmp_path):
    """First-round pairs come from the untrained reference: another learning rate may reuse them (and the store
    then records it). Pairs of round 1 were sampled by the trained policy: another learning rate is refused."""
    online = SETTINGS | {"training": {"online_every": 2, "learning_rate": 0.01}}
    faster = SETTINGS | {"training": {"online_every": 2, "learning_rate": 0.02}}
    store = PairStore.for_run(tmp_path / "pairs", settings=online, prompts=PROMPTS)
    _add_pair(store, 0, PROMPTS[0])
    PairStore.for_run(tmp_path / "pairs", settings=faster, prompts=PROMPTS)
    assert json.loads((tmp_path / "pairs" / MANIFEST).read_text())["config"] == faster
    store.mark_without_pair(0, PairRecord(round=1, prompt_index=0, prompt=PROMPTS[0], file="", winner_reward=0.0,
                                          loser_reward=0.0, model="/models/wan", latent_shape=[2]))
    with pytest.raises(RunMismatchError, match=r"training.learning_rate: 0.02 -> 0.01"):
        PairStore.for_run(tmp_path / "pairs", settings=online, prompts=PROMPTS)
    PairStore.for_run(tmp_path / "pairs", settings=faster, prompts=PROMPTS)
