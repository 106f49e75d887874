"""The byte structure of a package's zip: its members laid end to end from the first byte, then the
central directory, then the end records, and nothing else.

Zip readers are lenient on purpose: they skip bytes prepended to an archive (self-extractors), bytes
between members, bytes after the end record, and show a comment only when asked. Each of those is
room to carry something a reader of the package never sees checked. So a package must be exactly
the zip its central directory describes. Pure: the standard library only, no I/O beyond the file.
"""

from __future__ import annotations

import struct
import zipfile
from dataclasses import dataclass
from typing import BinaryIO

LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # signature .. name length, extra length
END_RECORD = struct.Struct("<4s4H2LH")
END_LOCATOR64 = struct.Struct("<4sLQL")
END_RECORD64 = struct.Struct("<4sQ2H2L4Q")
DATA_DESCRIPTOR_FLAG = 0x08
DD_SIGNATURE = b"PK\x07\x08"
ZIP64_EXTRA = 0x0001


@dataclass(frozen=True)
class Finding:
    kind: str
    detail: str


def _read(f: BinaryIO, at: int, n: int) -> bytes:
    f.seek(at)
    return f.read(n)


def _has_zip64_extra(extra: bytes) -> bool:
    i = 0
    while i + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, i)
        if tag == ZIP64_EXTRA:
            return True
        i += 4 + length
    return False


def _central_directory(f: BinaryIO, size: int) -> tuple[int, int, int] | Finding:
    """(central directory offset, its length, where it must end), read from the end records, which
    must close the file exactly (no comment, nothing after them)."""
    if size < END_RECORD.size:
        return Finding("zip_truncated", "too short to be a zip file")
    end = END_RECORD.unpack(_read(f, size - END_RECORD.size, END_RECORD.size))
    if end[0] != b"PK\x05\x06":
        tail_at = max(0, size - END_RECORD.size - 0xFFFF)
        tail = _read(f, tail_at, size - tail_at)
        at = tail.rfind(b"PK\x05\x06")
        if at >= 0 and at + END_RECORD.size <= len(tail):
            comment = END_RECORD.unpack_from(tail, at)[7]
            if comment and at + END_RECORD.size + comment == len(tail):
                return Finding(
                    "zip_comment", f"the zip carries a comment of {comment} bytes, which no manifest lists"
                )
        return Finding(
            "bytes_after_zip", "the file does not end with the zip's end record: bytes were put after it"
        )
    if end[7] != 0:
        return Finding("zip_comment", f"the zip carries a comment of {end[7]} bytes, which no manifest lists")
    cd_size, cd_offset = end[5], end[6]
    cd_end = size - END_RECORD.size
    locator_at = cd_end - END_LOCATOR64.size
    if locator_at >= 0 and _read(f, locator_at, 4) == b"PK\x06\x07":
        locator = END_LOCATOR64.unpack(_read(f, locator_at, END_LOCATOR64.size))
        record_at = locator[2]
        if record_at != locator_at - END_RECORD64.size:
            return Finding("bytes_in_zip", "bytes lie between the ZIP64 end records")
        record = END_RECORD64.unpack(_read(f, record_at, END_RECORD64.size))
        if record[0] != b"PK\x06\x06":
            return Finding("zip_malformed", "the ZIP64 end record is missing")
        cd_size, cd_offset, cd_end = record[8], record[9], record_at
    return cd_offset, cd_size, cd_end


def structure_findings(f: BinaryIO, size: int, infos: list[zipfile.ZipInfo]) -> list[Finding]:
    """What, in the file's bytes, is not a member, the central directory or the end records.

    ``infos`` are the central directory's entries as ``zipfile`` read them; their offsets are
    checked against the file itself, so a prepended payload (which ``zipfile`` silently steps over)
    shows as the first member not starting at byte 0."""
    found = _central_directory(f, size)
    if isinstance(found, Finding):
        return [found]
    cd_offset, cd_size, cd_end = found
    if _read(f, 0, 4) != b"PK\x03\x04":
        return [
            Finding("bytes_before_zip", "the file does not begin with a zip member: bytes were put before it")
        ]
    out: list[Finding] = []
    if cd_offset + cd_size != cd_end:
        out.append(
            Finding(
                "bytes_in_zip",
                f"the central directory ends at byte {cd_offset + cd_size}, its end record starts at {cd_end}",
            )
        )
    pos = 0
    for info in sorted(infos, key=lambda i: i.header_offset):
        if info.header_offset != pos:
            where = "before the first member" if pos == 0 else f"before member {info.filename}"
            out.append(
                Finding("bytes_in_zip", f"{abs(info.header_offset - pos)} bytes {where} belong to no member")
            )
            return out
        head = _read(f, pos, LOCAL_HEADER.size)
        if len(head) < LOCAL_HEADER.size or head[:4] != b"PK\x03\x04":
            out.append(Finding("zip_malformed", f"no local header where member {info.filename} should start"))
            return out
        fields = LOCAL_HEADER.unpack(head)
        flags, name_len, extra_len = fields[2], fields[9], fields[10]
        name = _read(f, pos + LOCAL_HEADER.size, name_len)
        extra = _read(f, pos + LOCAL_HEADER.size + name_len, extra_len)
        local_name = name.decode("utf-8" if flags & 0x800 else "cp437", errors="replace")
        if local_name != info.filename:
            out.append(
                Finding(
                    "names_disagree",
                    f"member {info.filename} is called {local_name} in its local header (extractors differ on which to use)",
                )
            )
        pos += LOCAL_HEADER.size + name_len + extra_len + info.compress_size
        if flags & DATA_DESCRIPTOR_FLAG:
            if _read(f, pos, 4) == DD_SIGNATURE:
                pos += 4
            pos += 20 if _has_zip64_extra(extra) else 12
    if pos != cd_offset:
        out.append(
            Finding(
                "bytes_in_zip", f"{cd_offset - pos} bytes between the last member and the central directory"
            )
        )
    return out
