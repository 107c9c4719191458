"""The command line: `python -m cli <command>` (also `python -m core`); each command module registers a subparser."""

from __future__ import annotations

import argparse
import importlib
import sys

from core.errors import TaxaLensError

# Modules with `register(subparsers)`; each adds a subparser whose `func(args) -> int` runs the command.
COMMAND_MODULES = (
    "cli.cam",
    "cli.demo",
    "cli.export",
    "cli.predict",
    "cli.taxonomy",
    "cli.train",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cli", description="TaxaLens command line.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (TaxaLensError, ValueError, FileNotFoundError) as exc:  # our errors carry the fix in their message
        print(f"error: {exc}", file=sys.stderr)
        return 2
