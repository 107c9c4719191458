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
    monkeypatch.delenv("TAXALENS_DEBUG", raising=False)
    code = main(["export", "--workspace", "w", "--out", "o.csv"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "KeyError" in err and "TAXALENS_DEBUG=1" in err
