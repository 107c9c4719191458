"""The command line's frame: the log handler behind `--verbose/-v` and `--quiet`, and the error handler that turns
every TaxaLens error (a `RuntimeError` one included) into `error: ...` and exit status 2."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest

from cli.main import HANDLER_NAME, LOGGED_PACKAGES, build_parser, configure_logging, main


@pytest.fixture
def restore_logging():
    """Leave the root handlers and the package levels as the test found them."""
    root = logging.getLogger()
    handlers = list(root.handlers)
    levels = {p: logging.getLogger(p).level for p in LOGGED_PACKAGES}
    yield
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
    for package, level in levels.items():
        logging.getLogger(package).setLevel(level)


@pytest.mark.parametrize(("argv", "verbosity"), [
    (["export", "--workspace", "w", "--out", "o"], 0),
    (["-v", "export", "--workspace", "w", "--out", "o"], 1),
    (["--verbose", "export", "--workspace", "w", "--out", "o"], 1),
    (["--quiet", "export", "--workspace", "w", "--out", "o"], -1),
    (["export", "--workspace", "w", "--out", "o", "--quiet"], -1),  # after the command too
    (["cam", "--workspace", "w", "--checkpoint", "c", "--sample", "s", "--out", "o", "-v"], 1),
])
def test_logging_options_stand_before_or_after_the_command(argv: list[str], verbosity: int):
    assert build_parser().parse_args(argv).verbosity == verbosity


def test_verbose_and_quiet_together_are_refused(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["-v", "--quiet", "export", "--workspace", "w", "--out", "o"])
    assert "not allowed with" in capsys.readouterr().err


def _emit() -> None:
    logging.getLogger("core.some_module").debug("core debug")
    logging.getLogger("models.some_module").info("models info")
    logging.getLogger("cli.some_module").warning("cli warning")
    logging.getLogger("alembic.runtime").info("library info")  # another library's chatter
    logging.getLogger("alembic.runtime").warning("library warning")


@pytest.mark.usefixtures("restore_logging")
def test_default_shows_info_as_plain_lines_and_warnings_with_their_level():
    stream = io.StringIO()
    configure_logging(0, stream=stream)
    _emit()
    assert stream.getvalue().splitlines() == ["models info", "warning: cli warning", "warning: library warning"]


@pytest.mark.usefixtures("restore_logging")
def test_quiet_shows_warnings_only_and_verbose_adds_debug_with_the_logger_name():
    quiet = io.StringIO()
    configure_logging(-1, stream=quiet)
    _emit()
    assert quiet.getvalue().splitlines() == ["warning: cli warning", "warning: library warning"]
    verbose = io.StringIO()
    configure_logging(1, stream=verbose)  # replaces the quiet handler: nothing more goes to `quiet`
    _emit()
    lines = verbose.getvalue().splitlines()
    assert [line.split(" ", 2)[2] for line in lines] == [
        "DEBUG core.some_module: core debug", "INFO models.some_module: models info",
        "WARNING cli.some_module: cli warning", "WARNING alembic.runtime: library warning"]
    assert len(quiet.getvalue().splitlines()) == 2
    assert [h.get_name() for h in logging.getLogger().handlers].count(HANDLER_NAME) == 1


@pytest.mark.usefixtures("restore_logging")
def test_a_label_store_error_is_reported_not_raised(tmp_path: Path, bccd_root: Path, monkeypatch, capsys):
    # LabelStoreError is a RuntimeError: before one TaxaLensError base it escaped the handler as a traceback
    monkeypatch.delenv("TAXALENS_LABEL_STORE_URL", raising=False)
    (tmp_path / "taxalens.toml").write_text(f'[dataset]\nroot = "{bccd_root}"\n[labels]\nurl = "mysql://u@host/db"\n',
                                            encoding="utf-8")
    code = main(["export", "--workspace", str(tmp_path), "--out", str(tmp_path / "out.csv"), "--verify", "none"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: `url` under [labels] in ") and "a mysql database" in err and "sqlite:///" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.usefixtures("restore_logging")
def test_the_default_handler_follows_sys_stderr(monkeypatch):
    configure_logging(0)
    swapped = io.StringIO()
    monkeypatch.setattr("sys.stderr", swapped)  # as pytest's capture or a tool does after the handler exists
    logging.getLogger("core.x").info("to the current stderr")
    assert swapped.getvalue() == "to the current stderr\n"
