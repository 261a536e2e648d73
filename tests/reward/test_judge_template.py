"""The judge template travels with the checkpoint: saved in the manifest, used by every scoring path, recorded
in the score settings and the stage-1 run record; malformed templates are refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from reward.cold_start import run_record
from reward.data import PreferencePair
from reward.errors import CheckpointError, ConfigError
from reward.inputs import encode
from reward.jobs import ScoreConfig, run_score
from reward.modeling import MANIFEST_NAME, REWARD_TOKEN, DeScoreModel, save_descore
from reward.pairs import PairCollator, PairExample
from reward.prompts import JUDGE_TEMPLATE, JudgeText, judge_text, read_judge_template, template_sha256
from reward.score_output import settings_path
from reward.scoring import DeScoreReward
from reward.video import load_video

from ..conftest import TINY_SPEC
from .helpers import small_clip, tiny_config

PROMPT = "a red square moving left"
# Different wording around the video, a literal JSON brace pair, and the prompt on both sides of the video.
CUSTOM = 'Rate how well the clip fits: {prompt}\n<video>\nReply with {{"score": 1}} for {prompt}.'


@pytest.fixture(scope="module")
def custom_checkpoint(tiny_qwen3_vl_dir, tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = DeScoreModel.from_base(str(tiny_qwen3_vl_dir), video_spec=TINY_SPEC, judge_template=CUSTOM)
    return save_descore(model, tmp_path_factory.mktemp("custom-template") / "ckpt")


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return small_clip(tmp_path_factory.mktemp("template-clip") / "clip.mp4")


def _reward_of_text(model: DeScoreModel, text: str, clip: Path) -> float:
    batch = encode(model.processor, [text], [load_video(clip, model.video_spec)])
    with torch.no_grad():
        return model(**batch).item()


def test_a_checkpoint_scores_with_the_template_it_was_saved_with(custom_checkpoint, clip):
    """The manifest holds the text; DeScoreReward's reward equals a forward on the conversation written here
    with that wording, and differs from the kit template's."""
    manifest = json.loads((custom_checkpoint / MANIFEST_NAME).read_text())
    assert manifest["judge_template"] == CUSTOM and manifest["format_version"] == 3
    scorer = DeScoreReward(custom_checkpoint, use_cot=False, device="cpu")
    assert scorer.model.judge_template == CUSTOM
    reward = scorer.score([clip], [PROMPT]).items[0].reward

    content = [
        {"type": "text", "text": f"Rate how well the clip fits: {PROMPT}\n"},
        {"type": "video"},
        {"type": "text", "text": f'\nReply with {{"score": 1}} for {PROMPT}.'},
    ]
    by_hand = scorer.model.processor.apply_chat_template(  # no CoT: <Reward> opens the assistant turn
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
    ) + REWARD_TOKEN
    assert reward == pytest.approx(_reward_of_text(scorer.model, by_hand, clip), abs=1e-6)
    kit_wording = scorer.head_rewards([judge_text(PROMPT)], [load_video(clip, TINY_SPEC)], [None]).item()
    assert abs(reward - kit_wording) > 1e-4


def test_the_score_settings_record_the_template(custom_checkpoint, clip, tmp_path):
    output = tmp_path / "scores.jsonl"
    run_score(ScoreConfig(model=str(custom_checkpoint), video=[str(clip)], prompt=[PROMPT], cot=False,
                          output=str(output), device="cpu"))
    recorded = json.loads(settings_path(output).read_text())["config"]["judge_template"]
    assert recorded == {"sha256": template_sha256(CUSTOM), "text": CUSTOM}


def test_a_format_2_checkpoint_loads_with_the_kit_template_and_one_warning(checkpoint, tmp_path, caplog):
    directory = Path(shutil.copytree(checkpoint, tmp_path / "old"))
    manifest = json.loads((directory / MANIFEST_NAME).read_text())
    del manifest["judge_template"]
    (directory / MANIFEST_NAME).write_text(json.dumps({**manifest, "format_version": 2}))
    with caplog.at_level("WARNING"):
        model = DeScoreModel.from_pretrained(directory)
    assert model.judge_template == JUDGE_TEMPLATE
    assert caplog.text.count("predates stored judge templates") == 1


@pytest.mark.parametrize(("template", "message"), [
    ("Judge this: <video>", r"no \{prompt\} placeholder"),
    ("{prompt} <video> and again <video>", "it has 2 <video> markers"),
    ("{prompt} with no video", "it has 0 <video> markers"),
    ("{prompt} <video> {score}", r"placeholders other than \{prompt\}: \['score'\]"),
    ('{prompt} <video> {"json": 1}', r"placeholders other than \{prompt\}"),
    ("{prompt} <video> a lone { brace", "braces do not parse"),
])
def test_malformed_templates_are_refused(template, message, tmp_path, checkpoint):
    with pytest.raises(ConfigError, match=message):
        judge_text(PROMPT, template=template)
    file = tmp_path / "template.txt"
    file.write_text(template + "\n")
    with pytest.raises(ConfigError, match=f"{file}: .*{message}"):
        read_judge_template(file)
    directory = Path(shutil.copytree(checkpoint, tmp_path / "ckpt"))
    manifest = json.loads((directory / MANIFEST_NAME).read_text())
    (directory / MANIFEST_NAME).write_text(json.dumps({**manifest, "judge_template": template}))
    with pytest.raises(CheckpointError, match=message):
        DeScoreModel.from_pretrained(directory)


def test_a_template_formats_the_prompt_on_both_sides_and_unescapes_braces():
    assert judge_text(" a cat ", template=CUSTOM) == JudgeText(
        prefix="Rate how well the clip fits: a cat\n", suffix='\nReply with {"score": 1} for a cat.'
    )
    # An instruction (the official `problem` column) is still used verbatim, whatever the template.
    assert judge_text("ignored", "Judge {this}: <video> now", template=CUSTOM) == JudgeText("Judge {this}: ", " now")


def test_stage1_trains_with_the_template_file_and_records_it(tiny_qwen3_vl_dir, tmp_path, clip):
    """The config reads the file (one final newline dropped), the run record holds its text and digest, and the
    pair collator writes it (a pair with its own instruction keeps that)."""
    file = tmp_path / "judge.txt"
    file.write_text(CUSTOM + "\n")
    train = tmp_path / "train.csv"
    train.write_text("prompt,video_a,video_b,label\n")
    config = tiny_config(tiny_qwen3_vl_dir, train, tmp_path / "run", judge_template=file)
    assert config.template() == CUSTOM
    assert run_record(config)["judge_template"] == {"sha256": template_sha256(CUSTOM), "text": CUSTOM}
    with pytest.raises(ConfigError, match="does not exist"):
        tiny_config(tiny_qwen3_vl_dir, train, tmp_path / "run", judge_template=tmp_path / "missing.txt")

    model = DeScoreModel.from_base(str(tiny_qwen3_vl_dir), video_spec=TINY_SPEC, judge_template=config.template())
    collator = PairCollator(model.processor, model.reward_token, "assistant", model.judge_template)
    video = load_video(clip, TINY_SPEC)
    pairs = [PreferencePair(PROMPT, str(clip), str(clip), 1, line=2),
             PreferencePair(PROMPT, str(clip), str(clip), 1, line=3, instruction="Official problem text <video> end")]
    batch = collator([PairExample(pair, video, video, use_cot=False) for pair in pairs])
    texts = model.processor.batch_decode(batch["input_ids"])
    assert f"Rate how well the clip fits: {PROMPT}" in texts[0] and f'Reply with {{"score": 1}} for {PROMPT}.' in texts[0]
    assert "Official problem text" in texts[1] and "Rate how well" not in texts[1]
