"""The command line: `python -m cli <command>` (also `python -m core`); each command module registers a subparser."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

from core.errors import TaxaLensError, user_message

# Modules with `register(subparsers)`; each adds a subparser whose `func(args) -> int` runs the command.
COMMAND_MODULES = (
    "cli.cam",
    "cli.demo",
    "cli.export",
    "cli.predict",
    "cli.train",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cli", description="TaxaLens command line.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status. A user's mistake (a `TaxaLensError`, a bad value, a missing or
    unreadable file) is one line on stderr and status 2; anything else is a bug, one line and status 1. Neither
    prints a traceback unless TAXALENS_DEBUG=1."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (TaxaLensError, ValueError, OSError) as exc:  # our errors carry the fix in their message
        _debug_traceback()
        print(f"error: {user_message(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the last line of defence: no traceback reaches a user
        _debug_traceback()
        print(f"error: TaxaLens failed unexpectedly ({type(exc).__name__}: {user_message(exc)[:300]}); this is a "
              "bug, please report it with the output of the same command run with TAXALENS_DEBUG=1", file=sys.stderr)
        return 1


def _debug_traceback() -> None:
    if os.environ.get("TAXALENS_DEBUG") == "1":
        traceback.print_exc()
