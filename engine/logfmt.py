"""`loom run`'s log format: `text` (the default) or `json`, one object per line.

A JSON line has `ts` (RFC 3339, UTC, milliseconds), `level`, `logger` and `msg`, then the
ids that apply: `trace_id`, `order_id`, `seq`, `account`. They come from the record
(`log.info(..., extra=fields(order_id=7))`) or from `log_fields(...)`, a context variable
set around work about one order or batch (a request handler's task, say). Anything else a
record carries in `fields` (the access log's method, path, status, ...) is added as is. An
exception is one `exc` string: never a multi-line traceback between JSON lines. The text
format appends the same ids as `key=value`, so text logs can be followed by trace id too.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from contextvars import ContextVar

FORMATS = ("text", "json")
CONTEXT_FIELDS = ("trace_id", "order_id", "seq", "account")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_context: ContextVar[dict | None] = ContextVar("loom_log_fields", default=None)


def fields(**values) -> dict:
    """`extra=` for a log call: the record carries these ids and fields."""
    return {"fields": values}


@contextlib.contextmanager
def log_fields(**values) -> Iterator[None]:
    """Every record logged inside (in this task or thread) carries these ids."""
    token = _context.set({**(_context.get() or {}), **values})
    try:
        yield
    finally:
        _context.reset(token)


def record_fields(record: logging.LogRecord) -> dict:
    """The ids and fields of a record: the context's, then the record's own (they win)."""
    out = {k: v for k, v in (_context.get() or {}).items() if v not in (None, "")}
    own = getattr(record, "fields", None)
    if own:
        out.update((k, v) for k, v in own.items() if v not in (None, ""))
    return out


def rfc3339(created: float) -> str:
    seconds = int(created)
    millis = int((created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": rfc3339(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record_fields(record).items():
            line.setdefault(key, value)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        text = super().formatMessage(record)
        extra = record_fields(record)
        return text + "".join(f" {k}={v}" for k, v in extra.items()) if extra else text


def formatter(name: str) -> logging.Formatter:
    if name not in FORMATS:
        raise ValueError(f"log format {name!r} is not one of {', '.join(FORMATS)}")
    return JsonFormatter() if name == "json" else TextFormatter()


def console_line(line: str, logger: str = "loom.console") -> str:
    """A console line (`loom: ready on ...`) as a JSON log line: in JSON mode stdout is
    JSON lines too."""
    record = logging.LogRecord(logger, logging.INFO, "", 0, line, None, None)
    return JsonFormatter().format(record)
