"""`tagclip` entry point: parse the command name, import that command's module, run it.

A command is a module with two functions:
    add_arguments(parser: argparse.ArgumentParser) -> None
    run(args: argparse.Namespace) -> int          # the exit status
and one row in COMMANDS. Only the chosen command's module is imported, so keep heavy imports (torch,
tagclip_core, flask, rq) out of other commands' module level anyway: `tagclip --help` imports none.
A command raises UsageError for bad arguments or input files; main prints it and exits with status 2.
Command arguments are parsed with parse_intermixed_args (options and paths in any order), so a command's
parser cannot use subparsers or argparse.REMAINDER.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType

from .errors import UsageError

# Exit status for bad usage (argparse's own).
USAGE_EXIT = 2
# Top-level modules of the optional extras (pyproject.toml), so a command that needs a missing one says which
# extra to install instead of dying with ModuleNotFoundError.
EXTRA_OF_MODULE = {
    "flask": "server",
    "gunicorn": "server",
    "redis": "server",
    "rq": "server",
    "label_studio_sdk": "server",
    "prometheus_client": "server",
    "requests": "server",
    "urllib3": "server",
    "iterstrat": "export",
    "sklearn": "export",
    "imagehash": "export",
    "yaml": "export",
}


@dataclass(frozen=True)
class Command:
    name: str
    # Dotted path of the module with add_arguments(parser) and run(args).
    module: str
    # One line for `tagclip --help`, also the command's description.
    help: str


COMMANDS: tuple[Command, ...] = (
    Command("tag", "tagclip_cli.tag", "tag images with TagCLIP and write one JSON line per image"),
    Command("eval", "tagclip_cli.evaluate", "score tag predictions (JSON lines) against ground-truth labels"),
    Command("serve", "tagclip_cli.serve", "run the Label Studio ML backend (gunicorn) on PORT"),
    Command("worker", "tagclip_cli.worker", "run a prediction worker on the backend's Redis queue"),
    Command("segment", "tagclip_cli.segment", "masks for each image's tags (CLIP-ES or coarse): .npz + overlay PNG"),
    Command("preannotate", "tagclip_cli.preannotate", "pre-annotate a whole Label Studio project with the workers"),
    Command("export", "tagclip_cli.export", "a project's reviewed annotations as a dataset: images, splits, formats"),
    Command("report", "tagclip_cli.report", "model predictions vs reviewed annotations: P/R/F1/AP, thresholds"),
    Command(
        "learn", "tagclip_cli.learn", "build or update a project's memory of reviewed examples (extra_params.learn)"
    ),
)


def build_parser(commands: Sequence[Command] = COMMANDS) -> argparse.ArgumentParser:
    """The top-level parser: command names only; each command's own arguments are parsed after import."""
    parser = argparse.ArgumentParser(
        prog="tagclip", description="Open-vocabulary multi-label image tagging with TagCLIP (no training)."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in commands:
        subparsers.add_parser(command.name, help=command.help, add_help=False)
    return parser


def command_parser(command: Command, module: ModuleType) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"tagclip {command.name}", description=command.help)
    module.add_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None, commands: Sequence[Command] = COMMANDS) -> int:
    """Run `tagclip ARGV...`; returns the exit status (argparse exits with 2 on malformed arguments)."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    chosen, rest = build_parser(commands).parse_known_args(arguments)
    command = next(c for c in commands if c.name == chosen.command)
    try:
        module = importlib.import_module(command.module)
        args = command_parser(command, module).parse_intermixed_args(rest)
        return module.run(args)
    except UsageError as error:
        print(f"tagclip {command.name}: error: {error}", file=sys.stderr)
        return USAGE_EXIT
    except ModuleNotFoundError as error:
        extra = EXTRA_OF_MODULE.get((error.name or "").split(".")[0])
        if extra is None:
            raise
        print(
            f"tagclip {command.name}: error: this command needs the '{extra}' extra ({error.name} is not installed): "
            f"pip install 'tagclip-studio[{extra}]'",
            file=sys.stderr,
        )
        return USAGE_EXIT


if __name__ == "__main__":
    sys.exit(main())
