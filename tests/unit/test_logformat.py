"""--log-format json: one JSON object per line."""

from __future__ import annotations

import json
import logging

from cli.logformat import handler


def test_json_lines_carry_level_logger_message_and_error() -> None:
    h = handler("json")
    record = logging.LogRecord("scheduler.api", logging.WARNING, __file__, 1, "node %s lost", ("n1",), None)
    entry = json.loads(h.format(record))
    assert entry["level"] == "warning" and entry["logger"] == "scheduler.api" and entry["msg"] == "node n1 lost"
    assert entry["ts"].endswith("Z") and "T" in entry["ts"]
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    line = h.format(record)
    assert "\n" not in line and "ValueError: bad" in json.loads(line)["error"]


def test_text_is_the_default_shape() -> None:
    record = logging.LogRecord("node.agent", logging.INFO, __file__, 1, "ready", (), None)
    assert handler("text").format(record).endswith(" INFO node.agent: ready")
