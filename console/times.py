"""How the console writes a moment: one way on every page, so a reader comparing a clip's times with
its custody trail, or a page with a printed statement, reads the same form everywhere.

Templates never format a time themselves (``tests/test_console_times.py`` holds them to it): a moment
is ``x | when`` (``<time datetime="ISO">06 Dec 2026 10:00:00 UTC</time>``), a day such as a retention
date is ``x | day`` (the same element, its date in UTC), and where markup cannot go (an ``<option>``'s
label, an attribute) ``x | when_text`` gives the same words without the element."""

from __future__ import annotations

from datetime import UTC, date, datetime

from markupsafe import Markup, escape

SHOWN = "%d %b %Y %H:%M:%S UTC"
DAY_SHOWN = "%d %b %Y"
NONE_SHOWN = "—"


def as_moment(value: datetime | date | str | None) -> datetime | None:
    """A datetime from what a page holds (a datetime, a date, or ISO 8601 text as the API gives it),
    in UTC; None for nothing or text that is not a time."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    if not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day, tzinfo=UTC)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)  # the service stores UTC throughout
    return value.astimezone(UTC)


def _element(value: datetime | date | str | None, shown: str) -> Markup:
    moment = as_moment(value)
    if moment is None:
        return Markup(escape(value)) if value else Markup(NONE_SHOWN)
    return Markup('<time datetime="{}">{}</time>').format(moment.isoformat(), moment.strftime(shown))


def when(value: datetime | date | str | None) -> Markup:
    """``<time datetime="ISO">06 Dec 2026 10:00:00 UTC</time>``, to the second; a dash for none, and
    text that is not a time shown as it is."""
    return _element(value, SHOWN)


def day(value: datetime | date | str | None) -> Markup:
    """``<time datetime="ISO">06 Dec 2026</time>``: the day (in UTC) of a date kept to the day, such as
    a retention or a closing date; the exact moment stays in the element, and a calendar date (a
    subject access request's due date) keeps its own ``2026-12-06``."""
    if isinstance(value, str) and len(value) == 10:
        try:
            value = date.fromisoformat(value)
        except ValueError:
            pass
    if isinstance(value, date) and not isinstance(value, datetime):
        return Markup('<time datetime="{}">{}</time>').format(value.isoformat(), value.strftime(DAY_SHOWN))
    return _element(value, DAY_SHOWN)


def when_text(value: datetime | date | str | None) -> str:
    """The words of ``when`` without the element, for where no markup may go (an option's label)."""
    moment = as_moment(value)
    if moment is None:
        return str(value) if value else NONE_SHOWN
    return moment.strftime(SHOWN)


FILTERS = {"when": when, "day": day, "when_text": when_text}
