"""S3 part numbers of a dock upload, handed out under the upload's lease (``ingest.uploads``).

Each part takes a number never used before for its upload, so a late part of a writer that lost its
lease cannot replace a part the newer writer sent. The numbers a body fills come in one transaction
(the first with the lease itself), not one transaction a part.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import ColumnElement, update
from sqlalchemy.orm import Session

from .models import Upload
from .tus_protocol import TusRefusal

# S3 numbers the parts of a multipart upload 1 to 10,000.
MAX_PART_NUMBER = 10_000
# Part numbers a writer takes in one transaction: a body's first ones come with its lease, so a
# clip of a few parts takes no transaction of its own for them; one cut short wastes at most these.
PART_NUMBER_BLOCK = 8


class LeaseLost(TusRefusal):
    """This request's lease ran out and another request took the upload over: nothing more of it is kept."""

    def __init__(self) -> None:
        super().__init__(
            409, "lease_lost", "another request took this upload over; ask HEAD for the offset and resume"
        )


def parts_for(sent: int, end: int, length: int, part_size: int) -> int:
    """How many S3 parts bytes ``sent`` to ``end`` of a clip of ``length`` fill: the whole parts, and
    the last, short one if ``end`` is the clip's end (at most ``PART_NUMBER_BLOCK``)."""
    whole, rest = divmod(max(0, end - sent), part_size)
    return min(PART_NUMBER_BLOCK, whole + (1 if rest and end == length else 0))


def issue_numbers(session: Session, mine: ColumnElement[bool], count: int, lease: timedelta) -> list[int]:
    """``count`` part numbers nobody has used for this upload, handed out only while the lease is
    held (``mine``) and renewed with it; a number past S3's last is never handed out."""
    last = session.scalar(
        update(Upload)
        .where(mine)
        .values(parts_issued=Upload.parts_issued + count, lease_until=datetime.now(UTC) + lease)
        .returning(Upload.parts_issued)
    )
    if last is None:
        raise LeaseLost()
    numbers = [n for n in range(int(last) - count + 1, int(last) + 1) if n <= MAX_PART_NUMBER]
    if not numbers:
        raise TusRefusal(410, "too_many_parts", "this upload has used every part number; start a new upload")
    return numbers
