"""The demo's tables reach the terminal as tables: one log message a line (the command line's
formatter escapes a line break inside a message, so a table logged whole became one long line of
literal ``\\n``)."""

import logging

from s2swclip import demo
from s2swclip.cli.main import _Formatter


def test_a_multi_line_text_is_logged_one_line_a_message():
    text = "| class | I-AUROC |\n|---|---:|\n| pill | 51.7 |\n"
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    handler.setLevel(logging.INFO)
    logger = logging.getLogger("s2swclip")
    saved = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        demo._log_lines(text)
        demo._log_lines(demo.REAL_WORKFLOW)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved)
    shown = [_Formatter().format(r) for r in records]
    assert shown[:3] == ["| class | I-AUROC |", "|---|---:|", "| pill | 51.7 |"]
    assert shown[3:] == demo.REAL_WORKFLOW.split("\n")
    assert not any("\\n" in line for line in shown)


def test_the_formatter_still_escapes_a_line_break_inside_one_message():
    record = logging.LogRecord("s2swclip", logging.INFO, __file__, 1, "name\nforged: line", None, None)
    assert _Formatter().format(record) == "name\\nforged: line"
