"""``descore`` — the command line: ``descore <group> <command> [--config RECIPE] [--key value ...]``.

Each command is a row of :data:`descore.commands.COMMANDS`. Flags follow the ``HfArgumentParser`` / TRL
convention: the recipe (a YAML file, or the bare name of a shipped one such as ``tiny_grpo``) sets defaults,
flags override them, and unknown keys are errors. :func:`main` turns the user's mistakes (bad flag or value,
missing file, not a checkpoint, unreadable data) into one line on stderr and exit status 2; anything else is
a bug in the kit and keeps its traceback. ``--debug`` anywhere on the command line shows the traceback of a
user error too. :func:`run_cli` is the same command line without that mapping, for programs and tests.

Nothing heavy is imported until a command runs, so ``descore --help`` stays fast.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import sys
from typing import Any, Mapping

from .commands import COMMANDS, GROUPS, Command
from .recipes import LAUNCH_FOLDERS, recipe_files, resolve_recipe

OWN_LOGGERS = ("descore", "reward", "generator_rl", "benchmarks")
VERSIONED = ("torch", "transformers", "diffusers", "accelerate", "peft", "trl")

# Options renamed so that both sides speak one vocabulary (HF TrainingArguments' names where it has one).
RENAMED = {
    "lora_r": "lora_rank",
    "save_every": "save_steps",
    "log_every": "logging_steps",
    "sample_every": "sample_steps",
    "out": "output_dir",
    "output": "output_dir",
}


class UsageError(ValueError):
    """The command line names no known group or command (raised before anything is imported)."""


def _usage() -> str:
    lines = ["usage: descore <group> <command> [--config RECIPE] [--key value ...] [--debug]",
             "       descore recipes | --version | --help", "", "groups:"]
    lines += [f"  {name:<10} {description}" for name, description in GROUPS.items()]
    lines += ["", "commands:"]
    lines += [f"  {key[0]:<10} {command.help}" for key, command in COMMANDS.items() if len(key) == 1]
    lines += [f"  {'recipes':<10} List the shipped recipes (--config NAME) and accelerate configs with their paths"]
    return "\n".join(lines)


def _group_listing(group: str) -> str:
    listing = [f"  {key[1]:<10} {command.help}" for key, command in COMMANDS.items() if key[0] == group and len(key) == 2]
    return "\n".join([f"usage: descore {group} <command> [--config RECIPE] [--key value ...]", "",
                      GROUPS[group], "", "commands:", *listing])


def _version() -> str:
    """The kit's version and those of the libraries it runs on, read from package metadata (no imports)."""
    from importlib.metadata import PackageNotFoundError, version

    import descore

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    libraries = ", ".join(f"{name} {installed(name)}" for name in VERSIONED)
    return f"descore-kit {descore.__version__}\n{libraries}, python {sys.version.split()[0]}"


def _recipe_listing() -> str:
    width = max(map(len, [*recipe_files(), *recipe_files(LAUNCH_FOLDERS)]))
    jobs = [f"  {name:<{width}}  {path}" for name, path in recipe_files().items()]
    launch = [f"  {name:<{width}}  {path}" for name, path in recipe_files(LAUNCH_FOLDERS).items()]
    return "\n".join(["job recipes (descore <group> <command> --config NAME):", *jobs, "",
                      "accelerate configs (accelerate launch --config_file PATH -m descore ...):", *launch])


def _find_command(argv: list[str]) -> tuple[tuple[str, ...], list[str]]:
    """The command ``argv`` names and the arguments after it."""
    for length in (2, 1):
        if tuple(argv[:length]) in COMMANDS:
            return tuple(argv[:length]), argv[length:]
    names = [*GROUPS, *(key[0] for key in COMMANDS if len(key) == 1), "recipes"]
    if not argv:
        raise UsageError(f"name a group or command: {', '.join(names)} (see descore --help)")
    if argv[0] not in GROUPS:
        raise UsageError(f"unknown group or command {argv[0]!r}{_suggest(argv[0], names)}; choose from {', '.join(names)}")
    commands = [key[1] for key in COMMANDS if key[0] == argv[0] and len(key) == 2]
    if len(argv) == 1:
        raise UsageError(f"name a command: {', '.join(commands)} (see descore {argv[0]} --help)")
    raise UsageError(f"unknown command {argv[1]!r}{_suggest(argv[1], commands)}; choose from {', '.join(commands)}")


def _suggest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, 1)
    return f" (did you mean {close[0]}?)" if close else ""


def _prog(argv: list[str]) -> str:
    """``descore``, ``descore reward`` or ``descore reward train``: as far as ``argv`` names known words."""
    words = ["descore"]
    if argv and (argv[0] in GROUPS or (argv[0],) in COMMANDS):
        words.append(argv[0])
        if len(argv) > 1 and tuple(argv[:2]) in COMMANDS:
            words.append(argv[1])
    return " ".join(words)


def _set_run_environment(configs: tuple) -> None:
    """Trackers stay local and quiet unless the user opts in: wandb runs offline, next to the job's outputs,
    and prints only what is critical (``WANDB_QUIET=false`` brings its messages back)."""
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_QUIET", "true")
    output_dir = next((getattr(c, "output_dir", None) for c in configs if getattr(c, "output_dir", None)), None)
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
        os.environ.setdefault("WANDB_DIR", os.path.abspath(output_dir))


def _hint(key: str, known: set[str]) -> str:
    if RENAMED.get(key) in known:
        return f"{key} (renamed: did you mean {RENAMED[key]}?)"
    close = difflib.get_close_matches(key, known, 3)
    return f"{key} (did you mean {' or '.join(close)}?)" if close else key


def check_keys(parser: argparse.ArgumentParser, argv: list[str], *, recipe: Mapping[str, Any],
               ignored: set[str] = frozenset()) -> None:
    """Reject unknown flags and recipe keys before any config is built, suggesting the closest known key.

    Recipe keys in ``ignored`` (fields of the command's ``ignores`` dataclasses) are allowed; as no parser
    option takes them, they are dropped."""
    from reward.errors import ConfigError

    flags = {option.lstrip("-").replace("-", "_") for action in parser._actions for option in action.option_strings}
    known = {action.dest for action in parser._actions}
    given = [token[2:].split("=", 1)[0].replace("-", "_") for token in argv if token.startswith("--")]
    unknown = [key for key in given if key not in flags]
    unknown += [key for key in recipe if key != "env" and key not in known and key not in ignored]
    if unknown:
        raise ConfigError(f"unknown option(s): {', '.join(_hint(key, known) for key in unknown)}")


def _split_config(argv: list[str]) -> tuple[str | None, list[str]]:
    """The ``--config`` value (``--config X`` or ``--config=X``) and the other arguments."""
    from reward.errors import ConfigError

    for index, token in enumerate(argv):
        if token.startswith("--config="):
            return token.split("=", 1)[1], argv[:index] + argv[index + 1:]
        if token == "--config":
            if index + 1 == len(argv) or argv[index + 1].startswith("--"):
                raise ConfigError("--config needs a recipe: a YAML file or a shipped name (descore recipes lists them)")
            return argv[index + 1], argv[:index] + argv[index + 2:]
    return None, argv


def _read_recipe(name: str) -> dict[str, Any]:
    import yaml

    from reward.errors import ConfigError

    path = resolve_recipe(name)
    with open(path) as handle:
        values = yaml.safe_load(handle) or {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a YAML mapping of keys to values")
    if not isinstance(values.get("env", {}), dict):
        raise ConfigError(f"{path}: env must be a mapping of environment variables to values")
    return values


def _parser(command: Command, prog: str) -> argparse.ArgumentParser:
    """The command's ``TrlParser``; its errors (an invalid float, a missing value) raise ConfigError instead
    of printing the usage and exiting."""
    from trl import TrlParser

    from reward.errors import ConfigError

    class Parser(TrlParser):
        def error(self, message: str):
            raise ConfigError(message)

    return Parser(command.config_classes(), prog=prog, description=command.help)


def parse_command(command: Command, argv: list[str], *, prog: str) -> tuple:
    """The command's config dataclasses from ``argv``: recipe values as defaults, flags over them."""
    from reward.errors import ConfigError

    parser = _parser(command, prog)
    name, argv = _split_config(argv)
    recipe = _read_recipe(name) if name is not None else {}
    check_keys(parser, argv, recipe=recipe, ignored=command.ignored_keys())
    os.environ.update({key: str(value) for key, value in recipe.pop("env", {}).items()})
    parser.set_defaults_with_config(**{key: value for key, value in recipe.items() if key not in command.flag_only})
    *configs, remaining = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if remaining:
        raise ConfigError(f"unexpected argument(s): {' '.join(remaining)} (options are --key value)")
    return tuple(configs)


class _TqdmHandler(logging.Handler):
    """Writes log lines above the progress bars (``tqdm.write``) instead of through them."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 -- logging's own contract: a failing handler reports, never raises
            self.handleError(record)


def _configure_logging() -> None:
    """The kit logs INFO, libraries (and Python warnings) only WARNING and above, all through one handler
    that writes above tqdm's bars. A program that configured logging itself keeps its handlers."""
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    logging.captureWarnings(True)
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)


def _route_library_logging() -> None:
    """transformers and diffusers print through handlers of their own; send theirs through ours instead.

    Called once the command's modules are imported: a library the job does not import is left alone."""
    for name in ("transformers", "diffusers"):
        if name in sys.modules:
            library_logging = __import__(f"{name}.utils.logging", fromlist=["logging"])
            library_logging.disable_default_handler()
            library_logging.enable_propagation()


def selected_command(command: Command, argv: list[str]) -> Command:
    """The job ``argv`` picks when the command has variants: ``--<key> value`` over the recipe's ``key``, over
    the keys that recognise a variant's recipe."""
    if command.variants is None:
        return command
    key = command.variants.key
    name, rest = _split_config(argv)
    recipe = _read_recipe(name) if name is not None else {}
    value = recipe.get(key)
    if value is None:
        value = next((variant for variant, keys in command.variants.recognised_by.items()
                      if any(marker in recipe for marker in keys)), None)
    for index, token in enumerate(rest):
        if token == f"--{key}" and index + 1 < len(rest):
            value = rest[index + 1]
        elif token.startswith(f"--{key}="):
            value = token.split("=", 1)[1]
    return command.selected(value)


def run_command(key: tuple[str, ...], argv: list[str]) -> int:
    command = selected_command(COMMANDS[key], argv)
    configs = parse_command(command, argv, prog=" ".join(["descore", *key]))
    run = command.run_function()
    _route_library_logging()
    _set_run_environment(configs)
    result = run(*configs)
    if command.report is not None:
        report = command.report(result)
        if report:
            sys.stdout.write(report + "\n")
    return 0


def run_cli(argv: list[str]) -> int:
    """The command line without error mapping: a user's mistake raises its typed error."""
    if argv and argv[0] in ("-h", "--help"):
        sys.stdout.write(_usage() + "\n")
        return 0
    if argv and argv[0] == "--version":
        sys.stdout.write(_version() + "\n")
        return 0
    if argv and argv[0] == "recipes":
        sys.stdout.write(_recipe_listing() + "\n")
        return 0
    if len(argv) >= 2 and argv[0] in GROUPS and argv[1] in ("-h", "--help"):
        sys.stdout.write(_group_listing(argv[0]) + "\n")
        return 0
    key, rest = _find_command(argv)
    _configure_logging()
    return run_command(key, rest)


def _is_users_mistake(error: Exception) -> bool:
    """A typed error of the kit, or a missing file: the user's to fix, so one line and no traceback.

    The kit's error classes are looked up only if their module was imported; if it was not, nothing could
    have raised them (and importing it would load torch just to print a message)."""
    errors = sys.modules.get("reward.errors")
    kit = () if errors is None else (errors.ConfigError, errors.CheckpointError, errors.DataError, errors.VideoDecodeError)
    return isinstance(error, (UsageError, FileNotFoundError, *kit))


def _message(error: Exception) -> str:
    if isinstance(error, FileNotFoundError) and error.filename is not None:
        return f"no such file or directory: {error.filename}"
    return str(error)


def main(argv: list[str] | None = None) -> int:
    """The ``descore`` console script: exit 0 on success, 2 with one line on stderr for a user's mistake."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [token for token in argv if token != "--debug"]
    try:
        return run_cli(argv)
    except Exception as error:
        if debug or not _is_users_mistake(error):
            raise
        sys.stderr.write(f"{_prog(argv)}: error: {_message(error)}\n")
        return 2
