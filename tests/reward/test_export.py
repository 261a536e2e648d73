"""The merged export scores on its own: ``reward.load(export)`` gives the rewards of the checkpoint it came from,
with and without CoT, because the export carries the head and the manifest next to the plain backbone (which
HF loaders still open: test_modeling.py::test_merged_export_is_a_plain_backbone)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import reward
from reward.jobs import EXPORT_MARKER, ExportConfig, run_export
from reward.modeling import HEAD_NAME, DeScoreManifest, save_descore

from ..conftest import TINY_SPEC
from .helpers import small_clip, trained_like

PROMPTS = ["a red square moving left", "a cat"]
COTS = ["It is red and moves left. <answer>{}</answer>", "No cat is seen."]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("export-clips")
    return [str(small_clip(root / "a.mp4", seed=1)), str(small_clip(root / "b.mp4", seed=2))]


@pytest.fixture(scope="module")
def adapter_checkpoint(tiny_qwen3_vl_dir, tmp_path_factory) -> Path:
    """A stage-1 adapter checkpoint whose LoRA, vision copy, <Reward> row and head all moved from their start,
    so that merging has something to fold in."""
    return save_descore(trained_like(tiny_qwen3_vl_dir, TINY_SPEC), tmp_path_factory.mktemp("adapter") / "ckpt")


def scored(source: Path, clips: list[str], mode: str) -> reward.RewardOutput:
    """Score through ``reward.load`` as a user does: CoT written by the model (4 greedy tokens), CoT given, or
    the one-forward mode without CoT."""
    scorer = reward.load(str(source), cot=mode != "no_cot", device="cpu", generation={"max_new_tokens": 4})
    return scorer.score(clips, PROMPTS, cots=COTS if mode == "given_cot" else None)


def manifest_without_format(directory: Path) -> dict:
    return {k: v for k, v in dataclasses.asdict(DeScoreManifest.read(directory)).items() if k != "backbone_format"}


@pytest.mark.parametrize("mode", ["generated_cot", "given_cot", "no_cot"])
def test_export_of_a_merged_checkpoint_scores_exactly_like_it(checkpoint, clips, tmp_path, mode):
    """A merged checkpoint exported in its own dtype is the same weights: rewards and CoTs are bit-identical."""
    export = run_export(ExportConfig(model=str(checkpoint), output_dir=str(tmp_path / "export")))
    source, exported = scored(checkpoint, clips, mode), scored(export, clips, mode)
    assert torch.isfinite(source.rewards).all()
    assert torch.equal(exported.rewards, source.rewards)
    assert [item.cot for item in exported.items] == [item.cot for item in source.items]
    assert DeScoreManifest.read(export) == DeScoreManifest.read(checkpoint)
    assert (export / HEAD_NAME).read_bytes() == (checkpoint / HEAD_NAME).read_bytes()


@pytest.mark.parametrize("mode", ["generated_cot", "given_cot", "no_cot"])
def test_export_of_an_adapter_checkpoint_scores_like_it(adapter_checkpoint, clips, tmp_path, mode):
    """Merging LoRA changes the float32 sums, not the model: rewards agree to 1e-5 and the greedy CoTs match.
    The manifest is the source's (base model, its fingerprint, <Reward> id, VideoSpec, CoT placement, training
    record) with the backbone now merged."""
    export = run_export(ExportConfig(model=str(adapter_checkpoint), output_dir=str(tmp_path / "export")))
    source, exported = scored(adapter_checkpoint, clips, mode), scored(export, clips, mode)
    torch.testing.assert_close(exported.rewards, source.rewards, rtol=1e-5, atol=1e-5)
    assert [item.cot for item in exported.items] == [item.cot for item in source.items]
    assert DeScoreManifest.read(export).backbone_format == "merged"
    assert DeScoreManifest.read(adapter_checkpoint).backbone_format == "adapter"
    assert manifest_without_format(export) == manifest_without_format(adapter_checkpoint)
    manifest = json.loads((export / "descore_config.json").read_text())
    assert {"torch", "transformers", "peft", "safetensors"} <= set(manifest["versions"])
    marker = json.loads((export / EXPORT_MARKER).read_text())
    assert marker["source_model"] == str(adapter_checkpoint.resolve()) and marker["source_revision"] is None


def test_an_export_can_be_exported_again(adapter_checkpoint, clips, tmp_path):
    """An export is a complete checkpoint: exporting it again gives the same weights, head and manifest."""
    first = run_export(ExportConfig(model=str(adapter_checkpoint), output_dir=str(tmp_path / "first")))
    second = run_export(ExportConfig(model=str(first), output_dir=str(tmp_path / "second")))
    for name in ("model.safetensors", HEAD_NAME):
        assert (second / name).read_bytes() == (first / name).read_bytes()
    assert DeScoreManifest.read(second) == DeScoreManifest.read(first)


def test_a_loader_that_reads_every_safetensors_file_finds_only_the_backbone(checkpoint, tmp_path):
    """vLLM's rule: take every *.safetensors file of the folder, keep those the index names. The export's
    index names model.safetensors for every backbone weight, so reward_head.safetensors is never taken for
    one; the index holds exactly the backbone's keys."""
    export = run_export(ExportConfig(model=str(checkpoint), output_dir=str(tmp_path / "export")))
    index = json.loads((export / "model.safetensors.index.json").read_text())
    every_file = {path.name for path in export.glob("*.safetensors")}
    assert every_file == {"model.safetensors", HEAD_NAME}
    assert every_file & set(index["weight_map"].values()) == {"model.safetensors"}
    with safe_open(export / "model.safetensors", framework="pt") as handle:
        assert set(index["weight_map"]) == set(handle.keys())
