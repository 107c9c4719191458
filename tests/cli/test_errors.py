"""No traceback reaches a user of the command line: each bad input of `tests/bad_inputs.py` ends `python -m cli`
with status 2 and one line on stderr that names the file, key or setting and the fix."""

from __future__ import annotations

import re

import pytest
import torch

from cli.main import main
from tests.bad_inputs import BAD_INPUTS, BadInput

ANSI = re.compile(r"\x1b\[")


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[case.name for case in BAD_INPUTS])
def test_bad_input_is_one_clear_line(case: BadInput, tmp_path, bccd_root, capsys):
    torch.set_num_threads(1)
    workspace = case.build(tmp_path / "ws", bccd_root)
    capsys.readouterr()
    code = main(case.argv(workspace, tmp_path / "scratch"))
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2, err
    assert len(errors) == 1, err
    message = errors[0]
    for phrase in case.phrases:
        assert phrase.format(bccd=bccd_root) in message, (phrase, message)
    for phrase in case.absent:
        assert phrase not in message, (phrase, message)
    assert "Traceback" not in err and not ANSI.search(err)
    assert message.rstrip()[-1] not in ",:;(" and "http" not in message  # not a cut-off or pasted driver message


def test_an_unexpected_failure_is_one_line_too(monkeypatch, capsys):
    """A bug (not a user's mistake) still prints no traceback: one line, status 1, and how to get the details."""
    import cli.export

    def broken(args):
        raise KeyError("boom")

    monkeypatch.setattr(cli.export, "_run", broken)
    code = main(["export", "--workspace", "w", "--out", "o.csv"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "KeyError" in err and "--verbose" in err
    assert main(["export", "--workspace", "w", "--out", "o.csv", "--verbose"]) == 1
    assert "Traceback" in capsys.readouterr().err  # asked for: the details, through the debug log


def test_a_dataset_folder_it_may_not_read_is_one_clear_line(tmp_path):
    """A real permission error (a mode-000 folder, the command run without root's override), through a real
    `python -m cli` process."""
    import subprocess
    import sys

    from tests.bad_inputs import REPO, UNREADABLE_PHRASES, as_ordinary_process, build_unreadable_root

    workspace = build_unreadable_root(tmp_path / "ws")
    argv = as_ordinary_process([sys.executable, "-m", "cli", "export", "--workspace", str(workspace), "--out",
                                str(tmp_path / "curated.csv")])
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and not ANSI.search(done.stderr)
    (message,) = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    for phrase in UNREADABLE_PHRASES:
        assert phrase in message, (phrase, message)


def test_a_message_with_terminal_escapes_and_newlines_prints_as_one_clean_line(monkeypatch, capsys):
    """Whatever a library put in a message (colour codes, line breaks), the user reads one plain line."""
    import cli.export
    from core.errors import TaxaLensError

    def coloured(args):
        raise TaxaLensError("\x1b[31mlabels.db\x1b[0m is damaged;\nrestore it\r\n from a backup")

    monkeypatch.setattr(cli.export, "_run", coloured)
    code = main(["export", "--workspace", "w", "--out", "o.csv"])
    assert code == 2
    assert capsys.readouterr().err == "error: labels.db is damaged; restore it from a backup\n"
