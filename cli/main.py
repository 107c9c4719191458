"""The command line: `python -m cli <command>` (also `python -m core`); each command module registers a subparser.

Global options `--verbose/-v` and `--quiet` (before or after the command) set what the log handler shows: the
modules of `core/`, `models/` and `cli/` log through `logging`, and this is the one place that gives them a handler
(stderr; a background training run's stderr is its `log.txt`, which the Retrain page shows). What a command prints
for the user (tables, paths written, progress) stays on stdout/stderr as before.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import TextIO

from core.errors import USER_ERRORS, user_message

logger = logging.getLogger(__name__)

# Modules with `register(subparsers)`; each adds a subparser whose `func(args) -> int` runs the command.
COMMAND_MODULES = (
    "cli.cache",
    "cli.cam",
    "cli.crossval",
    "cli.demo",
    "cli.export",
    "cli.index",
    "cli.predict",
    "cli.taxonomy",
    "cli.thresholds",
    "cli.train",
    "cli.verify_labels",
)
LOGGED_PACKAGES = ("core", "models", "cli")  # the loggers the handler serves; other libraries log warnings only
HANDLER_NAME = "taxalens-cli"
LEVELS = {-1: logging.WARNING, 0: logging.INFO, 1: logging.DEBUG}  # --quiet, default, --verbose


class _MessageFormatter(logging.Formatter):
    """INFO as the bare message (it reads like the command's own output); other levels as `warning: message`."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        return message if record.levelno == logging.INFO else f"{record.levelname.lower()}: {message}"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a record comes (a test or a tool may have swapped it since)."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self) -> TextIO:  # type: ignore[override]
        return sys.stderr


def configure_logging(verbosity: int = 0, *, stream: TextIO | None = None) -> logging.Handler:
    """Send the TaxaLens loggers to `stream` (default stderr) at WARNING (`verbosity` -1, `--quiet`), INFO (0) or
    DEBUG (1, `--verbose`, with time and logger name). Calling it again replaces the handler it installed before."""
    verbosity = max(-1, min(verbosity, 1))
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
        root.removeHandler(old)
    handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    handler.set_name(HANDLER_NAME)
    if verbosity > 0:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(_MessageFormatter("%(message)s"))
    handler.setLevel(logging.DEBUG)
    handler.addFilter(lambda record: record.name.split(".")[0] in LOGGED_PACKAGES or record.levelno >= logging.WARNING)
    root.addHandler(handler)
    for package in LOGGED_PACKAGES:
        logging.getLogger(package).setLevel(LEVELS[verbosity])
    return handler


def _add_logging_options(parser: argparse.ArgumentParser, *, default: object) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", dest="verbosity", action="store_const", const=1, default=default,
                       help="log debug details, with time and module")
    group.add_argument("--quiet", dest="verbosity", action="store_const", const=-1, default=default,
                       help="log warnings and errors only")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cli", description="TaxaLens command line.")
    _add_logging_options(parser, default=0)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    for command in subparsers.choices.values():  # the same options after the command; unset there, the global wins
        _add_logging_options(command, default=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status. A user's mistake (`USER_ERRORS`: a `TaxaLensError`, a bad value, a
    missing or unreadable file) is one line on stderr and status 2; anything else is a bug, one line and status 1.
    Neither prints a traceback unless `--verbose` asks for debug logging."""
    args = build_parser().parse_args(argv)
    configure_logging(args.verbosity)
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as exc:  # our errors carry the fix in their message
        logger.debug("%s failed", args.command, exc_info=True)
        print(f"error: {user_message(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the last line of defence: no traceback reaches a user
        logger.debug("%s failed unexpectedly", args.command, exc_info=True)
        print(f"error: TaxaLens failed unexpectedly ({type(exc).__name__}: {user_message(exc)[:300]}); this is a "
              "bug, please report it with the output of the same command run with --verbose", file=sys.stderr)
        return 1
