"""How the console writes a moment: one way on every page, so a reader comparing a clip's times with
its custody trail, or a page with a printed statement, reads the same form everywhere."""

from __future__ import annotations

from datetime import UTC, datetime

from markupsafe import Markup, escape

SHOWN = "%d %b %Y %H:%M:%S UTC"
NONE_SHOWN = "—"


def as_moment(value: datetime | str | None) -> datetime | None:
    """A datetime from what a page holds (a datetime, or ISO 8601 text as the API gives it), in UTC;
    None for nothing or text that is not a time."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)  # the service stores UTC throughout
    return value.astimezone(UTC)


def when(value: datetime | str | None) -> Markup:
    """``<time datetime="ISO">06 Dec 2026 10:00:00 UTC</time>``, to the second; a dash for none, and
    text that is not a time shown as it is."""
    moment = as_moment(value)
    if moment is None:
        return Markup(escape(value)) if value else Markup(NONE_SHOWN)
    return Markup('<time datetime="{}">{}</time>').format(moment.isoformat(), moment.strftime(SHOWN))
