"""Structured logging: brief, off the request path, and with every secret scrubbed at the boundary.

Three rules, each kept here rather than trusted to every caller:

- **Brief.** An exception is logged as one line (its type, the first line of its message and where
  it was raised), never as a traceback with local variables: rendering locals once cost seconds and
  megabytes, and put bearer tokens and password hashes in the log.
- **Off the request path.** A record is reduced (exception made brief) on the calling thread, then
  handed to a queue; formatting and writing happen on the log thread, so a slow disk or a burst of
  errors never holds up the event loop.
- **No secrets.** Every value, and then the finished line, passes :func:`scrub`: ``key=value`` forms
  of secret names, bearer credentials, argon2 hashes, our token formats and long random-looking
  strings are replaced by ``[redacted]``; so is the ``reason`` (or ``review_reason``) of a read in any
  logged address, which may name a patient (``ingest.read_reasons``).
"""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import queue
import re
import sys
import traceback
from collections.abc import MutableMapping
from types import TracebackType
from typing import IO, Any, TextIO

import structlog

_SECRET_NAMES = (
    r"authorization|password|passwd|secret|token|signing_key|api_key|cookie|csrf|session|"
    r"mqtt_password|private_key|password_hash"
)
SECRET_PATTERNS = [
    # name=value / "name": "value" (the value up to a quote, comma, brace or space)
    re.compile(rf"(?i)\b([\w-]*(?:{_SECRET_NAMES})[\w-]*)(['\"]?\s*[:=]\s*['\"]?)([^\s'\",;}}]+)"),
    re.compile(r"(?i)\b(bearer\s+|basic\s+)([A-Za-z0-9._~+/=-]+)"),
    re.compile(r"\$argon2(?:id|i|d)\$[^\s'\",;]+"),
    re.compile(r"\bevt_[A-Za-z0-9_-]{16,}"),
    # long base64url runs mixing cases and digits: the shape of every random token we issue
    # (hex ids and digests are one case and stay readable)
    re.compile(
        r"(?<![A-Za-z0-9_-])(?=[A-Za-z0-9_-]*[A-Z])(?=[A-Za-z0-9_-]*[a-z])(?=[A-Za-z0-9_-]*[0-9])[A-Za-z0-9_-]{24,}"
    ),
]
REDACTED = "[redacted]"
_MESSAGE_CHARS = 300
# A download link's token is its whole credential and travels in the path: never logged, whatever it looks like.
_LINK_TOKEN = re.compile(r"(/exports/download/)[^/\s'\"?#]+")
# Why an item was read (or deleted) may name a patient, and so may a search's words: a ``reason``,
# ``review_reason`` or ``q`` (or a read ``grant`` standing for a reason) in a logged address (an access line, a redirect's ``next``) is never
# written, plain or percent-encoded.
_READ_REASON = re.compile(
    r"(?i)((?:[?&]|%3F|%26)(?:review_reason|reason|q|grant)(?:=|%3D))(?:(?!%26)[^&\s'\"#])*"
)


def scrub(text: str) -> str:
    """``text`` with every secret-looking part replaced by ``[redacted]``."""
    text = SECRET_PATTERNS[0].sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)
    text = SECRET_PATTERNS[1].sub(lambda m: m.group(1) + REDACTED, text)
    text = _LINK_TOKEN.sub(lambda m: m.group(1) + REDACTED, text)
    text = _READ_REASON.sub(lambda m: m.group(1) + REDACTED, text)
    for pattern in SECRET_PATTERNS[2:]:
        text = pattern.sub(REDACTED, text)
    return text


def _scrub_value(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: _scrub_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_scrub_value(v) for v in value)
    return value


ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


def brief_exception(exc_info: ExcInfo) -> str:
    """One line: ``Type: first line of the message (file:line in function)``, without locals.

    Only the first line of the message is kept: database errors put the statement and its
    parameters (a password hash, a token digest) on the lines after it.
    """
    kind, exc, tb = exc_info
    lines = str(exc).strip().splitlines()
    message = lines[0][:_MESSAGE_CHARS] if lines else ""
    where = ""
    if tb is not None:
        frame = traceback.extract_tb(tb)[-1]
        where = f" ({frame.filename.rsplit('/', 2)[-2:][-1]}:{frame.lineno} in {frame.name})"
    return scrub(f"{kind.__name__}: {message}{where}")


def _scrub_processor(
    _logger: object, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """The redaction processor: the last step before rendering, over every value."""
    return {k: _scrub_value(v) if not k.startswith("_") else v for k, v in event.items()}


def _brief_exc_processor(
    _logger: object, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    exc_info = event.pop("exc_info", None)
    if exc_info:
        if exc_info is True:
            exc_info = sys.exc_info()
        if isinstance(exc_info, BaseException):
            exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
        if exc_info[0] is not None:
            event["exception"] = brief_exception(exc_info)
    event.pop("stack_info", None)
    return event


class _BriefQueueHandler(logging.handlers.QueueHandler):
    """Hands a record to the log thread after dropping its traceback (and the frames it holds).

    The exception becomes its one brief line here; everything else (formatting, writing) is done
    by the listener's thread.
    """

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        record = logging.makeLogRecord(record.__dict__)
        exc_info = record.exc_info
        if exc_info and exc_info[0] is not None and exc_info[1] is not None:
            record.__dict__["exception"] = brief_exception((exc_info[0], exc_info[1], exc_info[2]))
        record.exc_info = None
        record.exc_text = None
        record.stack_info = None
        if not isinstance(record.msg, dict):  # structlog's own records keep their event dict
            record.msg = record.getMessage()
            record.args = None
        return record


class _ScrubbingFormatter(structlog.stdlib.ProcessorFormatter):
    """The boundary: the finished line is scrubbed once more, whatever produced it."""

    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


_listener: logging.handlers.QueueListener | None = None


class _CurrentStderrHandler(logging.StreamHandler[TextIO]):
    """Writes each record to ``sys.stderr`` as it is then, not as it was at set-up: a process whose
    stderr is swapped after set-up (a daemon's redirect, a test runner's capture that is closed
    later) keeps its log instead of failing every write to the closed stream."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def flush_logging() -> None:
    """Write out every record queued so far (the log thread keeps running)."""
    if _listener is None:
        return
    q = _listener.queue
    if isinstance(q, queue.Queue):
        q.join()


def _stop_listener() -> None:
    global _listener
    if _listener is not None:
        _listener.stop()
        _listener = None


def configure_logging(level: str = "INFO", json_lines: bool = False, stream: IO[str] | None = None) -> None:
    """Route stdlib and structlog records through one renderer, on a log thread; ``extra=`` fields are kept."""
    global _listener
    _stop_listener()
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json_lines
        else structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback)
    )
    pre = [
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.stdlib.ExtraAdder(),
        _brief_exc_processor,
        _scrub_processor,
    ]
    formatter = _ScrubbingFormatter(
        foreign_pre_chain=pre,  # type: ignore[arg-type]
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _brief_exc_processor,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream) if stream is not None else _CurrentStderrHandler()
    handler.setFormatter(formatter)
    records: queue.Queue[logging.LogRecord] = queue.Queue()
    listener = logging.handlers.QueueListener(records, handler)
    listener.start()
    _listener = listener
    root = logging.getLogger()
    root.handlers[:] = [_BriefQueueHandler(records)]
    root.setLevel(level)
    for noisy in ("uvicorn.access", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel("WARNING")
    structlog.configure(
        processors=[*pre, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],  # type: ignore[list-item]
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )


atexit.register(_stop_listener)
