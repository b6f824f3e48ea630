"""``runtime.logs.setup`` in-process (tests/test_edge_logging.py checks what ``serve`` prints)."""

from __future__ import annotations

def test_logging_follows_stderr_when_a_runner_swaps_and_closes_it(monkeypatch, capsys):
    """``setup`` without a stream writes to the current ``sys.stderr``: a CLI runner that set
    it up under its own stand-in and closed it leaves no handler on a closed file."""
    import io
    import logging
    import sys

    from runtime.logs import setup

    stand_in = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stand_in)
    setup("info")
    logging.getLogger("runtime.test").info("under the runner")
    monkeypatch.undo()
    stand_in.close()
    logging.getLogger("runtime.test").info("after the runner")
    err = capsys.readouterr().err
    assert "Logging error" not in err
    assert any(line.endswith("after the runner") for line in err.splitlines())
