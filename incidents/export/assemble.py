"""Assembling a package on download: the zip's bytes from its stored layout and the items' locked
objects, each media object checked again as it streams."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from chain_of_custody import package_layout as pl
from chain_of_custody.fixity import FixityCheck, checked_range
from chain_of_custody.models import EvidenceItem
from storage.objects import ObjectStore

from . import media
from .media import PackageAltered, _altered


def read_layout(store: ObjectStore, item: EvidenceItem) -> pl.Layout:
    """The package item's layout, after checking the object against the item's recorded hash."""
    data = store.get_bytes(item.object_key, item.version_id)
    check = FixityCheck(item.sha256, None, item.size)  # a few KB: SHA-256, the evidence hash itself
    check.update(data)
    if not check.ok:
        raise PackageAltered(_altered(item.id, check))
    try:
        return pl.decode(data)
    except pl.LayoutError as exc:
        raise PackageAltered(f"package {item.id}: {exc}") from None


AlteredHook = Callable[[pl.MediaSegment, FixityCheck], None]


def _media_piece(
    store: ObjectStore, seg: pl.MediaSegment, lo: int, n: int, on_altered: AlteredHook | None
) -> Iterator[bytes]:
    """Bytes ``lo``..``lo+n`` of one media member, read whole (a window at a time) so that it is
    checked against the digests the package recorded; the last block sent waits for the check, so an altered object
    never reaches the recipient complete."""
    check = FixityCheck(seg.sha256, seg.blake3, seg.length)
    blocks = media._media_blocks(store, seg.key, seg.version_id, tap=check.update)

    def mismatch(found: FixityCheck) -> None:
        if on_altered is not None:
            on_altered(seg, found)
        raise PackageAltered(_altered(seg.item_id, found))

    yield from checked_range(blocks, check, lo, n, mismatch)


def assemble(
    store: ObjectStore,
    layout: pl.Layout,
    start: int = 0,
    end: int | None = None,
    on_altered: AlteredHook | None = None,
) -> Iterator[bytes]:
    """The package's bytes ``start``..``end`` (inclusive; the whole zip by default), streamed.

    Raises PackageAltered (after calling ``on_altered``) when a media object no longer matches."""
    last = layout.size - 1 if end is None else end
    for seg, lo, n in pl.pieces(layout, start, last):
        if isinstance(seg, pl.DataSegment):
            yield layout.blob[seg.offset + lo : seg.offset + lo + n]
        else:
            yield from _media_piece(store, seg, lo, n, on_altered)


def items_read(layout: pl.Layout, start: int = 0, end: int | None = None) -> list[str]:
    """The evidence items whose stored bytes a download of this range reads."""
    last = layout.size - 1 if end is None else end
    return list(
        dict.fromkeys(
            s.item_id for s, _, _ in pl.pieces(layout, start, last) if isinstance(s, pl.MediaSegment)
        )
    )
