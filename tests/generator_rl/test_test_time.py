"""Test-time scaling in `tune sample` on the tiny Wan with the brightness reward: best-of-N keeps the argmax of
its recorded candidates, the recorded score is the written file's own score (lossless), N = 4 beats N = 1 on the
same seeds and best_of 1 is plain sampling; the noise search is deterministic and never below its plain sample;
a killed search resumes, other settings are refused, and a reward that fails on some candidates is handled."""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import generator_rl.sample as sample_module
from generator_rl.config import PolicyConfig
from generator_rl.sample import INDEX, SAMPLES_RECORD, SampleConfig, run_sample
from generator_rl.test_time import (
    CANDIDATE_SEED_STRIDE,
    CANDIDATES,
    SearchSettings,
    best_candidate,
    lookahead_sigmas,
    noise_beam_cost,
    perturbed_noise,
    stored_frames,
    top_candidates,
)
from reward import build_reward
from reward.errors import ConfigError
from reward.run_record import RunMismatchError
from reward.video import write_video

from .fault_rewards import NAN_REWARD
from .helpers import Preempted
from .test_sample import decoded

PROMPTS = "a red square moving left\na dog running on the beach\n"


def tiny_arguments(model: Path) -> PolicyConfig:
    """The tiny Wan at the sizes of the tiny recipes, 3 steps and CFG: seconds per video on a CPU."""
    return PolicyConfig(model=str(model), transformer_dtype="float32", text_encoder_dtype="float32", height=32, width=32,
                        num_frames=9, num_steps=3, guidance_scale=3.0, max_sequence_length=16)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny Wan (its VAE above all) samples several times faster on one thread when jobs share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("inputs")
    (folder / "prompts.txt").write_text(PROMPTS)
    (folder / "brightness.yaml").write_text("name: brightness\n")
    (folder / "smoothness.yaml").write_text("name: temporal_smoothness\n")
    return {path.stem: path for path in folder.iterdir()}


def rows(folder: Path) -> list[dict[str, str]]:
    with (folder / CANDIDATES).open() as handle:
        return list(csv.DictReader(handle))


def brightness_of_file(path: Path) -> float:
    return float(build_reward({"name": "brightness"}).score([path], [""]).rewards[0])


# ----- pure pieces ------------------------------------------------------------------------------------------------


def test_selection_never_picks_nan_and_breaks_ties_by_order():
    nan = math.nan
    assert best_candidate([0.2, nan, 0.5, 0.5]) == 2
    assert best_candidate([nan, nan]) is None and best_candidate([]) is None
    assert best_candidate([-math.inf, nan]) is None  # only finite rewards compete
    assert top_candidates([0.1, nan, 0.9, 0.4, 0.9], 3) == [2, 4, 3]
    assert top_candidates([nan, 0.3], 2) == [1]


def test_perturbed_noise_stays_standard_normal_and_keeps_its_correlation():
    """z' = √(1 − a²)·z + a·ε: mean 0, variance (1 − a²) + a² = 1, correlation with z √(1 − a²) = 0.8 for a = 0.6."""
    generator = torch.Generator().manual_seed(0)
    z, eps = torch.randn(400_000, generator=generator), torch.randn(400_000, generator=generator)
    child = perturbed_noise(z, eps, 0.6)
    assert abs(float(child.mean())) < 0.01 and abs(float(child.var()) - 1) < 0.01
    assert abs(float(torch.corrcoef(torch.stack([z, child]))[0, 1]) - 0.8) < 0.01
    torch.testing.assert_close(perturbed_noise(z, eps, 1.0), eps)


def test_lookahead_schedule_and_cost():
    sigmas = torch.tensor([1.0, 0.8, 0.5, 0.0])
    torch.testing.assert_close(lookahead_sigmas(sigmas, 1), torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(lookahead_sigmas(sigmas, 2), torch.tensor([1.0, 0.8, 0.0]))
    torch.testing.assert_close(lookahead_sigmas(sigmas, 3), sigmas)
    with pytest.raises(ValueError, match=r"lookahead steps must be in \[1, 3\], got 4"):
        lookahead_sigmas(sigmas, 4)
    # W = 4, K = 2, R = 3, L = 2, S = 20: 4·2 + 3·(4 − 2)·2 + (2 + 1)·20 = 80
    assert noise_beam_cost(SearchSettings("noise_beam", 1, 4, 2, 3, 2, 0.5), 20) == 80


def test_stored_frames_are_what_a_lossless_file_decodes_to(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, (5, 32, 48, 3), dtype=np.uint8)
    path = write_video(tmp_path / "clip.mp4", frames, 16.0, lossless=True)
    np.testing.assert_array_equal(stored_frames(frames), decoded(path))
    assert not np.array_equal(stored_frames(frames), frames)  # yuv420p is not lossless in RGB


@pytest.mark.parametrize(("overrides", "message"), [
    ({"best_of": 4}, "--best_of, --search noise_beam and --keep_candidates need --reward"),
    ({"search": "noise_beam"}, "need --reward"),
    ({"reward": "R", "search": "beam"}, "search must be one of best_of, noise_beam, got 'beam'"),
    ({"reward": "R", "best_of": 0}, "best_of must be an integer >= 1, got 0"),
    ({"reward": "R", "search": "noise_beam"}, "search noise_beam runs the Euler ODE (it scores intermediate latents), "
                                              "not the pipeline sampler; pass --sampler euler_ode"),
    ({"reward": "R", "search": "noise_beam", "sampler": "euler_ode", "beam_keep": 4},
     "beam_keep (4) must be < beam_width (4)"),
    ({"reward": "R", "search": "noise_beam", "sampler": "euler_ode", "perturbation": 0.0}, "perturbation must be in (0, 1]"),
    ({"reward": "R", "search": "noise_beam", "sampler": "euler_ode", "best_of": 3}, "best_of (3) applies to search best_of"),
    ({"reward": "no/such.yaml"}, "--reward no/such.yaml is not a file"),
    ({"reward": "UNKNOWN"}, "unknown reward model 'brightnes'"),
])
def test_bad_search_settings_are_refused(tmp_path, files, overrides, message):
    (tmp_path / "unknown.yaml").write_text("name: brightnes\n")
    reward = {"R": str(files["brightness"]), "UNKNOWN": str(tmp_path / "unknown.yaml")}
    overrides = overrides | ({"reward": reward.get(overrides["reward"], overrides["reward"])} if "reward" in overrides else {})
    with pytest.raises(ConfigError) as raised:
        SampleConfig(prompts="p.txt", output_dir=str(tmp_path / "out"), **overrides)
    assert message in str(raised.value)


# ----- best-of-N --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def best_of_runs(tiny_wan_dir, files, tmp_path_factory) -> dict[str, Path]:
    """The same two prompts and seeds: plain sampling, best_of 1 and best_of 4 by brightness (lossless)."""
    folder, arguments = tmp_path_factory.mktemp("best_of"), tiny_arguments(tiny_wan_dir)
    common = {"prompts": str(files["prompts"]), "seed": 3, "lossless": True, "device": "cpu"}
    run_sample(arguments, SampleConfig(output_dir=str(folder / "plain"), **common))
    for count in (1, 4):
        run_sample(arguments, SampleConfig(output_dir=str(folder / f"best_of_{count}"), reward=str(files["brightness"]),
                                           best_of=count, **common))
    return {path.name: path for path in folder.iterdir()}


def test_best_of_keeps_the_argmax_of_its_recorded_scores_exactly(best_of_runs):
    """Per video: 4 rows with the seeds s + 10⁹·j, the kept one is the argmax of the recorded rewards, and that
    reward is the written file decoded and scored again (lossless: exactly)."""
    out = best_of_runs["best_of_4"]
    table = rows(out)
    assert [(r["prompt_index"], r["k"], r["candidate"], r["stage"], r["seed"]) for r in table] == [
        (str(i), "0", str(j), "full", str(3 + 1000 * i + CANDIDATE_SEED_STRIDE * j)) for i in range(2) for j in range(4)]
    for i, file in enumerate(["0000_0.mp4", "0001_0.mp4"]):
        video = [r for r in table if r["file"] == file]
        rewards = [float(r["reward"]) for r in video]
        assert [r["kept"] for r in video] == ["1" if j == int(np.argmax(rewards)) else "0" for j in range(4)]
        assert brightness_of_file(out / file) == max(rewards)
    assert (out / INDEX).read_text().splitlines()[1:] == [
        "a red square moving left,3,0000_0.mp4,pipeline", "a dog running on the beach,1003,0001_0.mp4,pipeline"]
    record = json.loads((out / SAMPLES_RECORD).read_text())["config"]["search"]
    assert record["method"] == "best_of" and record["best_of"] == 4
    assert record["reward"]["entry"] == {"name": "brightness"} and record["reward"]["label"] == "brightness"


def test_best_of_4_beats_best_of_1_and_best_of_1_is_plain_sampling(best_of_runs):
    one, four = rows(best_of_runs["best_of_1"]), rows(best_of_runs["best_of_4"])
    kept = {name: [float(r["reward"]) for r in table if r["kept"] == "1"] for name, table in (("one", one), ("four", four))}
    assert [float(r["reward"]) for r in four if r["candidate"] == "0"] == kept["one"]  # candidate 0 = the plain seed
    assert np.mean(kept["four"]) > np.mean(kept["one"])
    for file in ("0000_0.mp4", "0001_0.mp4"):
        np.testing.assert_array_equal(decoded(best_of_runs["best_of_1"] / file), decoded(best_of_runs["plain"] / file))
    assert [brightness_of_file(best_of_runs["plain"] / f) for f in ("0000_0.mp4", "0001_0.mp4")] == kept["one"]


def test_a_killed_search_resumes_and_other_settings_are_refused(best_of_runs, tiny_wan_dir, files, tmp_path, monkeypatch):
    """Killed while writing the second video: the re-run searches only that one and ends with the straight run's
    files; a re-run with another N, another reward or none at all is refused with the differences."""
    arguments = tiny_arguments(tiny_wan_dir)
    config = {"prompts": str(files["prompts"]), "seed": 3, "lossless": True, "device": "cpu",
              "reward": str(files["brightness"]), "best_of": 4, "output_dir": str(tmp_path / "resumed")}
    written = []
    encode = sample_module.write_video_atomically

    def killed_on_second(path, frames, **options):
        written.append(Path(path).name)
        if len(written) == 2:
            raise Preempted("simulated kill while writing the second video")
        return encode(path, frames, **options)

    monkeypatch.setattr(sample_module, "write_video_atomically", killed_on_second)
    with pytest.raises(Preempted):
        run_sample(arguments, SampleConfig(**config))
    monkeypatch.undo()
    first = (tmp_path / "resumed" / "0000_0.mp4").stat().st_mtime_ns
    searched = []
    monkeypatch.setattr(sample_module, "write_video_atomically",
                        lambda path, *args, **kwargs: searched.append(Path(path).name) or encode(path, *args, **kwargs))
    run_sample(arguments, SampleConfig(**config))
    assert searched == ["0001_0.mp4"] and (tmp_path / "resumed" / "0000_0.mp4").stat().st_mtime_ns == first
    for name in ("0000_0.mp4", "0001_0.mp4", CANDIDATES, INDEX):
        assert (tmp_path / "resumed" / name).read_bytes() == (best_of_runs["best_of_4"] / name).read_bytes(), name

    for change, difference in (({"best_of": 3}, "search.best_of: 4 -> 3"),
                               ({"reward": str(files["smoothness"])}, "search.reward:"),
                               ({"reward": None, "best_of": 1}, "search.method: best_of -> <absent>")):
        with pytest.raises(RunMismatchError) as raised:
            run_sample(arguments, SampleConfig(**config | change))
        assert difference in str(raised.value)


def test_a_reward_failing_on_some_candidates(tiny_wan_dir, files, tmp_path, caplog):
    """best_of 2 over two videos = reward calls 1-4. Calls 1, 3 and 4 fail: video 0 keeps its candidate 1 (NaN
    never wins), video 1 fails — not written, not in index.csv, rows without a reward, logged. A re-run (a fresh
    reward: call 1 fails, call 2 scores) searches video 1 again and writes it."""
    entry = tmp_path / "flaky.yaml"
    entry.write_text(f"name: {NAN_REWARD}\nnan_calls: '1:3:4'\n")
    config = SampleConfig(prompts=str(files["prompts"]), output_dir=str(tmp_path / "out"), seed=3, device="cpu",
                          reward=str(entry), best_of=2)
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="generator_rl.sample"):
        paths = run_sample(tiny_arguments(tiny_wan_dir), config)
    assert paths == [out / "0000_0.mp4", out / "0001_0.mp4"] and not paths[1].exists()
    assert [(r["file"], r["candidate"], r["reward"] != "", r["kept"]) for r in rows(out)] == [
        ("0000_0.mp4", "0", False, "0"), ("0000_0.mp4", "1", True, "1"),
        ("0001_0.mp4", "0", False, "0"), ("0001_0.mp4", "1", False, "0")]
    assert (out / INDEX).read_text().splitlines()[1:] == ["a red square moving left,3,0000_0.mp4,pipeline"]
    assert "1 of 2 video(s) failed: the reward failed on every candidate" in caplog.text

    run_sample(tiny_arguments(tiny_wan_dir), config)
    assert paths[1].exists() and [r["kept"] for r in rows(out)] == ["0", "1", "0", "1"]
    assert len((out / INDEX).read_text().splitlines()) == 3


# ----- noise search -----------------------------------------------------------------------------------------------


def test_the_noise_search_is_deterministic_and_never_below_its_plain_sample(tiny_wan_dir, files, tmp_path):
    """W = 3 noises, K = 1 kept, 2 rounds, look-ahead 1 step, 3 ODE steps: two runs write the same bytes and
    candidates; the written video's reward is the best final one and >= the plain euler_ode sample's, which is
    candidate 0's full row exactly; the forward passes are 3·1 + 2·2·1 + finalists·3."""
    arguments = tiny_arguments(tiny_wan_dir)
    common = {"prompts": str(files["prompts"]), "seed": 5, "lossless": True, "device": "cpu", "sampler": "euler_ode"}
    search = {"reward": str(files["brightness"]), "search": "noise_beam", "beam_width": 3, "beam_keep": 1,
              "beam_rounds": 2, "lookahead_steps": 1, "perturbation": 0.7}
    first, second = (run_sample(arguments, SampleConfig(output_dir=str(tmp_path / name), **common, **search))
                     for name in ("first", "second"))
    plain = run_sample(arguments, SampleConfig(output_dir=str(tmp_path / "plain"), **common))
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]
    assert (tmp_path / "first" / CANDIDATES).read_bytes() == (tmp_path / "second" / CANDIDATES).read_bytes()
    table = rows(tmp_path / "first")
    for number, video in enumerate(first):
        mine = [r for r in table if r["file"] == video.name]
        lookahead = [r for r in mine if r["stage"] == "lookahead"]
        finals = {int(r["candidate"]): float(r["reward"]) for r in mine if r["stage"] == "full"}
        assert [(r["round"], r["parent"] != "") for r in lookahead] == [("0", False)] * 3 + [("1", True)] * 2 + [("2", True)] * 2
        assert 0 in finals and len(finals) <= 2
        kept = [float(r["reward"]) for r in mine if r["kept"] == "1"]
        assert kept == [max(finals.values())] and brightness_of_file(video) == kept[0]
        assert finals[0] == brightness_of_file(plain[number]) <= kept[0]
        record = json.loads((tmp_path / "first" / "search" / f"{number:06d}.json").read_text())
        assert record["forward_passes"] == 3 * 1 + 2 * 2 * 1 + len(finals) * 3


# ----- bench compare ----------------------------------------------------------------------------------------------


def test_compare_reports_a_best_of_column_with_its_deltas(files, tmp_path):
    """`bench compare --best_of 3 --search_reward brightness` without LoRAs: the column base+best_of_3 is sampled by
    the search (its candidate 0 is the base video), scored like any model, and its paired deltas are the kept
    candidates' rewards minus candidate 0's, read back from its candidates.csv (lossless, so exactly)."""
    from benchmarks.compare import CompareConfig
    from descore.cli import main

    output = tmp_path / "compare"
    assert main(["bench", "compare", "--config", "tiny_compare", "--prompts", str(files["prompts"]), "--best_of", "3",
                 "--search_reward", "brightness", "--videos_per_prompt", "1", "--output_dir", str(output)]) == 0
    report = json.loads((output / "report.json").read_text())
    assert report["models"] == {"base": {"lora": None},
                                "base+best_of_3": {"lora": None, "best_of": 3, "search_reward": "brightness"}}
    table = rows(output / "samples" / "base+best_of_3")
    kept = [float(r["reward"]) for r in table if r["kept"] == "1"]
    plain = [float(r["reward"]) for r in table if r["candidate"] == "0"]
    assert report["per_prompt"]["base+best_of_3"]["brightness"] == kept
    assert report["per_prompt"]["base"]["brightness"] == plain
    delta = report["deltas"]["base+best_of_3"]["brightness"]
    assert delta["mean"] == pytest.approx(np.mean(np.subtract(kept, plain)), abs=1e-12) and delta["mean"] >= 0
    assert delta["prompts"] == 2 and "temporal_smoothness" in report["deltas"]["base+best_of_3"]
    with pytest.raises(ConfigError, match=r"--best_of needs --search_reward, the label of one of --rewards"):
        CompareConfig(prompts=str(files["prompts"]), output_dir=str(tmp_path / "x"), rewards=[{"name": "brightness"}],
                      vbench_dimensions=[], best_of=[2], search_reward="aesthetics")
