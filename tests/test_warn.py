"""jaxlm/runtime/warn.py: the ``jaxlm`` command shows a warning as one line, once per run, from
process 0; the embedded corpus raises no DataWarning in a 2-process run."""

import warnings

from datahelpers import pipeline, take

from jaxlm.cli import main
from jaxlm.config import SourceConfig
from jaxlm.data.errors import DataWarning
from jaxlm.runtime import process_log, warn


def test_the_command_shows_a_warning_in_one_line_with_its_category(capsys):
    assert main(["train", "train.log_every=5", "train.steps=0"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == ("warning: train.log_every is now logging.every (shared by train and "
                      "finetune); using logging.every=5 (ConfigWarning)")
    assert err[1].startswith("jaxlm: error: train.steps=0") and len(err) == 2  # no file:line
    assert not warn.active()  # the command put Python's back


def test_each_distinct_warning_shows_once_and_folds_line_breaks(capsys):
    warn.install()
    try:
        for _ in range(2):  # as a source opened again for every evaluation
            with warnings.catch_warnings():  # which resets Python's memory of what it showed
                warnings.simplefilter("always")
                warnings.warn("source 'x' has 1 file", DataWarning, stacklevel=1)
        warnings.warn("another\n  line", DataWarning, stacklevel=1)
    finally:
        warn.uninstall()
    assert capsys.readouterr().err.splitlines() == [
        "warning: source 'x' has 1 file (DataWarning)", "warning: another line (DataWarning)"]


def test_processes_other_than_0_write_warnings_to_their_log_only(tmp_path, monkeypatch, capsys):
    log = tmp_path / "process_1.log"
    log.write_text("")
    monkeypatch.setattr(process_log, "_log_path", log)
    monkeypatch.setattr(warn, "_process", lambda: (1, True))
    warn.install()
    try:
        warnings.warn("every process sees this", DataWarning, stacklevel=1)
    finally:
        warn.uninstall()
    assert capsys.readouterr().err == ""
    assert log.read_text().rstrip().endswith(
        "jaxlm[1] WARNING warning: every process sees this (DataWarning)")


def test_the_embedded_corpus_raises_no_data_warning_on_two_processes():
    for rank in range(2):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pipeline(None, sources=[SourceConfig()], process_index=rank, process_count=2,
                          shuffle_rows=0) as p:
                assert take(p, 1)
        assert not [w for w in caught if issubclass(w.category, DataWarning)], caught
