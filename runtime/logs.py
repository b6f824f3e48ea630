"""One logging setup for every role: level and format from the settings, a request id per line.

Why one setup: uvicorn, the app, the gateway and the maintenance jobs all log through the
standard :mod:`logging` tree, so configuring the root logger once (and letting uvicorn's own
loggers propagate to it instead of installing uvicorn's handlers) gives the operator one
stream with one format. ``CVMFS_EPHEMERAL_LOG_FORMAT=json`` writes one JSON object per line
(what Loki, Elastic or Cloud Logging ingest without a parser); the default is a human line.

Every line carries ``time``, ``level``, ``logger``, ``message`` and ``request_id`` (``-``
outside a request). The request id lives in a :mod:`contextvars` variable set by the request
middleware (:mod:`runtime.server.requestlog`); ``asyncio.to_thread`` copies the context, so
lines logged by worker threads of a request carry its id too.

Structured events (an upload, a delete, a maintenance run) are logged with :func:`event`:
their fields become JSON keys, or ``key=value`` pairs after the message in the human format.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import sys
from typing import Any

#: The request being served by this task or thread (``-``: none).
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

#: Loggers that uvicorn configures itself unless told otherwise; they must propagate to ours.
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")

LEVELS = {"trace": 5, "debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR, "critical": logging.CRITICAL}

_HANDLER_NAME = "cvmfs-ephemeral"


def level_number(name: str) -> int:
    """``debug`` → 10 …; an unknown name is a configuration error (ValueError)."""
    try:
        return LEVELS[name.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown log level {name!r}: use one of {', '.join(LEVELS)}") from None


class _RequestIdFilter(logging.Filter):
    """Stamps every record with the current request id (set on the handler, so every logger's
    records get it, including third-party ones)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id.get()
        return True


def _timestamp(record: logging.LogRecord) -> str:
    t = dt.datetime.fromtimestamp(record.created, dt.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, dict) else {}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, then event fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": _timestamp(record), "level": record.levelname.lower(),
            "logger": record.name, "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        for key, value in _fields(record).items():
            out.setdefault(key, value)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class HumanFormatter(logging.Formatter):
    """``2026-12-01T10:50:23.123Z INFO  runtime.server.uploads [req-id] message key=value``."""

    def format(self, record: logging.LogRecord) -> str:
        line = (f"{_timestamp(record)} {record.levelname:<7} {record.name} "
                f"[{getattr(record, 'request_id', '-')}] {record.getMessage()}")
        extra = " ".join(f"{k}={_human(v)}" for k, v in _fields(record).items())
        if extra:
            line = f"{line} {extra}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return line


def _human(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if (not text or any(c in text for c in " \"=\n")) else text


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted, not when logging was set
    up: a runner that swaps stderr for a while (a CLI test runner, a capturing test harness)
    and then closes its stand-in never leaves the process logging into a closed file."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def setup(level: str = "info", fmt: str = "human", stream: Any = None) -> None:
    """Configure the root logger (idempotent: a second call replaces our handler).

    uvicorn's loggers lose their own handlers and propagate here; ``serve`` passes
    ``log_config=None`` to uvicorn so that it does not install them again.
    """
    number = level_number(level)
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.get_name() == _HANDLER_NAME:
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    handler.set_name(_HANDLER_NAME)
    handler.addFilter(_RequestIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else HumanFormatter())
    root.addHandler(handler)
    root.setLevel(number)
    for name in UVICORN_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(logging.NOTSET)
    logging.captureWarnings(True)


def event(logger: logging.Logger, level: int, message: str, **fields: Any) -> None:
    """Log one structured event: ``fields`` become JSON keys (or ``key=value`` pairs)."""
    logger.log(level, message, extra={"fields": fields})


__all__ = ["HumanFormatter", "JsonFormatter", "event", "level_number", "request_id", "setup"]
