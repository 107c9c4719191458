"""The command line: `python -m core <command>`; each command module registers its own subparser."""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules with `register(subparsers)`; each adds a subparser whose `func(args) -> int` runs the command.
COMMAND_MODULES = (
    "core.cam_cli",
    "core.demo_cli",
    "core.export_cli",
    "core.predict_cli",
    "core.train_cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description="TaxaLens command line.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:  # our errors carry the fix in their message
        print(f"error: {exc}", file=sys.stderr)
        return 2
