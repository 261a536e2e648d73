"""``descore`` — the command line: ``descore <group> <command> [--config FILE.yaml] [--key value ...]``.

Each command is a row of a table (help, config dataclasses, run function). Flags follow the
``HfArgumentParser`` / TRL convention: the YAML file sets defaults, flags override them, and unknown keys
are errors. Exceptions propagate, so a failed job exits non-zero.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import sys
from typing import Callable

import yaml

from reward.cli import Command
from reward.errors import ConfigError

def _reward_commands() -> dict[str, Command]:
    from reward.cli import commands

    return commands()


def _tune_commands() -> dict[str, Command]:
    from generator_rl.cli import commands

    return commands()


def _bench_commands() -> dict[str, Command]:
    from .demo import DemoConfig, run_demo

    return {"demo": Command("Tiny end-to-end run: build models and data, train, score", (DemoConfig,), run_demo, str)}


# group -> (description, loader of its command table); loaders import lazily so `--help` stays fast
GROUPS: dict[str, tuple[str, Callable[[], dict[str, Command]]]] = {
    "reward": ("Train, score and export DeScore reward models", _reward_commands),
    "tune": ("Post-train Wan-2.1 with reward models: GRPO, Flow-DPO, sampling, doctor", _tune_commands),
}


def _usage() -> str:
    lines = ["usage: descore <group> <command> [--config FILE.yaml] [--key value ...]", "", "groups:"]
    lines += [f"  {name:<8} {description}" for name, (description, _) in GROUPS.items()]
    lines += ["  demo     Tiny end-to-end run on CPU (tiny models, synthetic data, training, scoring)"]
    return "\n".join(lines)


def _set_run_environment(configs: tuple) -> None:
    """Trackers stay local unless the user opts in: wandb runs offline, next to the job's outputs."""
    os.environ.setdefault("WANDB_MODE", "offline")
    output_dir = next((getattr(c, "output_dir", None) for c in configs if getattr(c, "output_dir", None)), None)
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
        os.environ.setdefault("WANDB_DIR", os.path.abspath(output_dir))


# Options renamed so that both sides speak one vocabulary (HF TrainingArguments' names where it has one).
RENAMED = {
    "lora_r": "lora_rank",
    "save_every": "save_steps",
    "log_every": "logging_steps",
    "sample_every": "sample_steps",
    "out": "output_dir",
    "output": "output_dir",
}


def _hint(key: str, known: set[str]) -> str:
    if RENAMED.get(key) in known:
        return f"{key} (renamed: did you mean {RENAMED[key]}?)"
    close = difflib.get_close_matches(key, known, 3)
    return f"{key} (did you mean {' or '.join(close)}?)" if close else key


def check_keys(parser: argparse.ArgumentParser, argv: list[str], ignored: set[str] = frozenset()) -> None:
    """Reject unknown flags and YAML keys before any config is built, suggesting the closest known key.

    YAML keys in ``ignored`` (fields of the command's ``ignores`` dataclasses) are allowed and dropped."""
    flags = {option.lstrip("-").replace("-", "_") for action in parser._actions for option in action.option_strings}
    known = {action.dest for action in parser._actions}
    given = [token[2:].split("=", 1)[0].replace("-", "_") for token in argv if token.startswith("--")]
    given = [key for key in given if key not in flags]
    if "--config" in argv and argv.index("--config") + 1 < len(argv):
        with open(argv[argv.index("--config") + 1]) as handle:
            values = yaml.safe_load(handle) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{argv[argv.index('--config') + 1]} must hold a YAML mapping of keys to values")
        given += [key for key in values if key != "env" and key not in known and key not in ignored]
    unknown = [key for key in given if key != "config"]
    if unknown:
        raise ConfigError(f"{parser.prog}: unknown option(s): {', '.join(_hint(key, known) for key in unknown)}")


def run_command(prog: str, command: Command, argv: list[str]) -> int:
    from trl import TrlParser

    parser = TrlParser(command.configs, prog=prog, description=command.help)
    ignored = {name for config in command.ignores for name in config.__dataclass_fields__}
    check_keys(parser, argv, ignored)
    configs = parser.parse_args_and_config(argv, return_remaining_strings=bool(ignored))
    if ignored:
        configs = configs[:-1]  # the ignored YAML keys, already vetted by check_keys
    _set_run_environment(configs)
    result = command.run(*configs)
    if command.report is not None:
        report = command.report(result)
        if report:
            sys.stdout.write(report + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(_usage() + "\n")
        return 0 if argv else 2
    group, rest = argv[0], argv[1:]
    if group == "demo":
        return run_command("descore demo", _bench_commands()["demo"], rest)
    if group not in GROUPS:
        sys.stderr.write(f"descore: unknown group {group!r}\n\n{_usage()}\n")
        return 2
    description, load = GROUPS[group]
    table = load()
    if not rest or rest[0] in ("-h", "--help") or rest[0] not in table:
        listing = "\n".join(f"  {name:<8} {command.help}" for name, command in table.items())
        problem = "" if not rest or rest[0] in ("-h", "--help") else f"descore {group}: unknown command {rest[0]!r}\n\n"
        (sys.stderr if problem else sys.stdout).write(f"{problem}descore {group}: {description}\n\ncommands:\n{listing}\n")
        return 2 if problem or not rest else 0
    return run_command(f"descore {group} {rest[0]}", table[rest[0]], rest[1:])


if __name__ == "__main__":
    sys.exit(main())
