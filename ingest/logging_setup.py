"""Structured logging; secrets (tokens, passwords, keys) are scrubbed from every record."""

from __future__ import annotations

import logging
import re
import sys

import structlog

SECRET_PATTERNS = [
    re.compile(r"(?i)(authorization|password|secret|token|signing_key)(['\"]?\s*[:=]\s*['\"]?)([^\s'\",}]+)"),
    re.compile(r"(?i)(bearer\s+)([A-Za-z0-9._~+/=-]+)"),
    re.compile(r"evt_[A-Za-z0-9_-]{20,}"),
]


def scrub(text: str) -> str:
    text = SECRET_PATTERNS[0].sub(lambda m: m.group(1) + m.group(2) + "[redacted]", text)
    text = SECRET_PATTERNS[1].sub(lambda m: m.group(1) + "[redacted]", text)
    return SECRET_PATTERNS[2].sub("[redacted]", text)


def _scrub_processor(_logger: object, _name: str, event: dict[str, object]) -> dict[str, object]:
    return {k: scrub(v) if isinstance(v, str) else v for k, v in event.items()}


class _ScrubFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = scrub(record.msg)
        if record.args:
            record.args = tuple(scrub(a) if isinstance(a, str) else a for a in record.args)
        return True


def configure_logging(level: str = "INFO", json_lines: bool = False) -> None:
    """Route stdlib and structlog records through one renderer; ``extra=`` fields are kept."""
    renderer = (
        structlog.processors.JSONRenderer() if json_lines else structlog.dev.ConsoleRenderer(colors=False)
    )
    pre = [
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.stdlib.ExtraAdder(),
        _scrub_processor,
    ]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=pre,  # type: ignore[arg-type]
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    handler.addFilter(_ScrubFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("uvicorn.access", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel("WARNING")
    structlog.configure(
        processors=[*pre, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],  # type: ignore[list-item]
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
