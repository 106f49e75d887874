"""The bytes of a ZIP64 package around its members, computed without holding or rewriting the members.

The package is the zip that Python's ``zipfile`` writes to a stream it cannot seek: each member is a
local header (sizes and CRC left zero), the data, and a data descriptor with the CRC and sizes; then
the central directory and the end records (ZIP64 ones when offsets or counts need them). Because the
header comes before the data and the CRC after it, the whole zip can be hashed in one streaming pass.
Media members are stored (not deflated), so their bytes in the zip are exactly the stored objects.

``tests/test_export_package.py`` checks these bytes against ``zipfile``'s own for the same members.
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from datetime import datetime

ZIP64_LIMIT = (1 << 31) - 1
DATA_DESCRIPTOR_FLAG = 0x08
DD_SIGNATURE = 0x08074B50
CENTRAL_DIR = struct.Struct("<4s4B4HL2L5H2L")
END_RECORD = struct.Struct("<4s4H2LH")
END_RECORD64 = struct.Struct("<4sQ2H2L4Q")
END_LOCATOR64 = struct.Struct("<4sLQL")
ZIP64_VERSION = 45
ZIP_FILECOUNT_LIMIT = (1 << 16) - 1


class ZipBuilder:
    """Hands out a package's non-member bytes in order, keeping the offsets the central directory needs.

    Call ``header`` before a member's data and ``descriptor`` after it (with its CRC-32 and stored
    size), ``deflated`` for a small member whose bytes are given, and ``end`` once at the end.
    """

    def __init__(self, when: datetime) -> None:
        self.when = when.timetuple()[:6]
        self.pos = 0
        self.members: list[zipfile.ZipInfo] = []
        self._open: tuple[zipfile.ZipInfo, bool] | None = None

    def header(self, path: str, size: int, stored: bool) -> bytes:
        if self._open is not None:
            raise RuntimeError("the previous member has no data descriptor yet")
        info = zipfile.ZipInfo(path, date_time=self.when)
        info.compress_type = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
        info.external_attr = 0o644 << 16
        info.file_size = size
        info.compress_size = 0
        info.CRC = 0
        info.flag_bits = DATA_DESCRIPTOR_FLAG
        info.header_offset = self.pos
        zip64 = size * 1.05 > ZIP64_LIMIT  # zipfile's own rule for a member of known size
        raw = info.FileHeader(zip64)
        self._open = (info, zip64)
        self.pos += len(raw)
        return raw

    def descriptor(self, crc32: int, compress_size: int, file_size: int) -> bytes:
        if self._open is None:
            raise RuntimeError("no member is open")
        info, zip64 = self._open
        if file_size != info.file_size:
            raise ValueError(f"{info.filename}: {file_size} bytes written, {info.file_size} announced")
        if not zip64 and max(file_size, compress_size) > ZIP64_LIMIT:
            raise ValueError(f"{info.filename}: too large for a member without ZIP64 headers")
        info.CRC = crc32
        info.compress_size = compress_size
        raw = struct.pack("<LLQQ" if zip64 else "<LLLL", DD_SIGNATURE, crc32, compress_size, file_size)
        self.pos += compress_size + len(raw)
        self.members.append(info)
        self._open = None
        return raw

    def deflated(self, path: str, data: bytes) -> bytes:
        """Header, deflated data and descriptor of a small member, as ``zipfile`` writes them."""
        head = self.header(path, len(data), stored=False)
        compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
        body = compressor.compress(data) + compressor.flush()
        return head + body + self.descriptor(zlib.crc32(data), len(body), len(data))

    def end(self) -> bytes:
        """Central directory and end records (mirrors ``zipfile.ZipFile._write_end_record``)."""
        if self._open is not None:
            raise RuntimeError("the last member has no data descriptor")
        start_dir = self.pos
        out = bytearray()
        for info in self.members:
            dt = info.date_time
            dosdate = (dt[0] - 1980) << 9 | dt[1] << 5 | dt[2]
            dostime = dt[3] << 11 | dt[4] << 5 | (dt[5] // 2)
            extra: list[int] = []
            if info.file_size > ZIP64_LIMIT or info.compress_size > ZIP64_LIMIT:
                extra += [info.file_size, info.compress_size]
                file_size = compress_size = 0xFFFFFFFF
            else:
                file_size, compress_size = info.file_size, info.compress_size
            if info.header_offset > ZIP64_LIMIT:
                extra.append(info.header_offset)
                header_offset = 0xFFFFFFFF
            else:
                header_offset = info.header_offset
            extra_data = b""
            min_version = 0
            if extra:
                extra_data = struct.pack("<HH" + "Q" * len(extra), 1, 8 * len(extra), *extra)
                min_version = ZIP64_VERSION
            filename = info.filename.encode("ascii" if info.filename.isascii() else "utf-8")
            flag_bits = info.flag_bits | (0 if info.filename.isascii() else 0x800)
            out += CENTRAL_DIR.pack(
                b"PK\001\002",
                max(min_version, info.create_version),
                info.create_system,
                max(min_version, info.extract_version),
                info.reserved,
                flag_bits,
                info.compress_type,
                dostime,
                dosdate,
                info.CRC,
                compress_size,
                file_size,
                len(filename),
                len(extra_data),
                0,
                0,
                info.internal_attr,
                info.external_attr,
                header_offset,
            )
            out += filename + extra_data
        end_dir = start_dir + len(out)
        count, size, offset = len(self.members), len(out), start_dir
        if count > ZIP_FILECOUNT_LIMIT or offset > ZIP64_LIMIT or size > ZIP64_LIMIT:
            out += END_RECORD64.pack(b"PK\006\006", 44, 45, 45, 0, 0, count, count, size, offset)
            out += END_LOCATOR64.pack(b"PK\006\007", 0, end_dir, 1)
            count, size, offset = min(count, 0xFFFF), min(size, 0xFFFFFFFF), min(offset, 0xFFFFFFFF)
        out += END_RECORD.pack(b"PK\005\006", 0, 0, count, count, size, offset, 0)
        self.pos += len(out)
        return bytes(out)
