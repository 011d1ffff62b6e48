"""components.progress: a live counter on a terminal, one line per stage in a log."""

import io
import logging

from triplet_tfx.components.progress import Progress


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_log_gets_one_line_per_stage_and_a_terminal_the_live_count(monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="triplet_tfx.components.progress")
    piped = io.StringIO()
    monkeypatch.setattr("sys.stderr", piped)
    with Progress("Embedding", 3000, "examples") as progress:
        for _ in range(3):
            progress.advance(1000)
    assert "\r" not in piped.getvalue()  # not a terminal: no live count drawn (a log handler may write here)
    assert [r.getMessage().rsplit(" in ", 1)[0] for r in caplog.records] == ["Embedding: 3000 examples"]

    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    with Progress("k-NN", 10, "queries") as progress:
        progress.advance(4)
    assert terminal.getvalue().startswith("\rk-NN: 4/10 queries (40%")
    drawn = terminal.getvalue()
    assert drawn.index("\r\033[K") > drawn.index("40%")  # the live line is cleared at the end
