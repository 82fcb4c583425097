"""Record log: an append-only file of exact wire messages, for record, replay and session stores.

Why a custom format: a recording must keep every multipart part byte for byte (so a replay is
indistinguishable from the instrument), survive a crash mid-write (the file is readable up to
the last complete record), and be readable by other tools without rewardscope. Everything is
little-endian.

File layout::

    offset  size  field
    0       5     magic  b"RSREC"
    5       1     format version (currently 1)
    6       1     b"\\n"
    7       ...   records, back to back, until end of file

Record layout (offsets relative to the start of the record)::

    0       4     u32  body_len   bytes in the body (everything after this 20-byte header)
    4       8     f64  t          receive time, unix seconds
    12      4     u32  n_parts    number of multipart parts
    16      4     u32  crc        zlib CRC-32 of record bytes 0..15 followed by the body
    20      ...   body: n_parts x (u32 part_len, then part_len bytes)

So ``body_len == 4 * n_parts + sum(part_len)``; a reader checks that the parts consume the body
exactly. The CRC also covers ``body_len``, ``t`` and ``n_parts``, so a torn or flipped header is
caught as well as a damaged body. A file that ends inside a record, or whose last records fail
the CRC or the size caps, is read up to the last good record; the reader reports the rest as a
damaged tail (:attr:`RecordReader.truncated_tail`, :attr:`RecordReader.bytes_skipped`) instead
of raising, so a partly written recording still replays. Nothing is resynchronised past a
damaged record: an append-only log is only ever damaged at its end.
"""

from __future__ import annotations

import io
import logging
import math
import os
import struct
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

log = logging.getLogger(__name__)

MAGIC = b"RSREC"
FORMAT_VERSION = 1
FILE_HEADER = MAGIC + bytes([FORMAT_VERSION]) + b"\n"
FILE_HEADER_SIZE = len(FILE_HEADER)  # 7

RECORD_HEADER = struct.Struct("<IdII")  # body_len, t, n_parts, crc
RECORD_HEADER_SIZE = RECORD_HEADER.size  # 20
PART_LEN = struct.Struct("<I")

# Read-side caps: a corrupt length field must not make the reader allocate gigabytes.
# 256 MiB matches the protocol's default message cap; parts are few (topic, header, arrays).
DEFAULT_MAX_PARTS = 1024
DEFAULT_MAX_RECORD_BYTES = 512 * 1024 * 1024
_U32_MAX = 0xFFFFFFFF

BytesLike = bytes | bytearray | memoryview


class RecordFormatError(ValueError):
    """The file is not a record log (bad magic) or has a format version this code cannot read."""


@dataclass(frozen=True, slots=True)
class Record:
    """One recorded message: receive time (unix s) and its multipart parts, byte for byte."""

    t: float
    parts: list[bytes]


def is_record_log(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` is a file starting with the record-log magic (any version)."""
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except (OSError, ValueError):
        return False


def _read_file_header(f: BinaryIO, path: str | os.PathLike[str]) -> None:
    head = f.read(FILE_HEADER_SIZE)
    if head[: len(MAGIC)] != MAGIC:
        raise RecordFormatError(f"{os.fspath(path)}: not a rewardscope record log (bad magic)")
    if len(head) < FILE_HEADER_SIZE or head[len(MAGIC) + 1:] != b"\n":
        raise RecordFormatError(f"{os.fspath(path)}: truncated record-log file header")
    if head[len(MAGIC)] != FORMAT_VERSION:
        raise RecordFormatError(f"{os.fspath(path)}: record-log version {head[len(MAGIC)]} "
                                f"is not supported (this code reads {FORMAT_VERSION})")


# ----------------------------------------------------------------------------- writing

class RecordWriter:
    """Append messages to a record log; each record goes straight to the OS (optionally fsynced).

    The file is unbuffered, so a crash of this process loses at most the message being written;
    ``fsync=True`` extends that to power loss at the cost of a disk sync per message.
    ``append=True`` opens an existing log, cuts off any damaged tail and continues after the
    last good record (how a session store resumes after a crash).
    Safe to call :meth:`write` from several threads.
    """

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = False,
                 append: bool = False) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self.count = 0
        self.bytes_written = 0
        self._lock = threading.Lock()
        if append and self.path.exists() and self.path.stat().st_size > 0:
            self._f = self._open_for_append()
        else:
            self._f = open(self.path, "wb", buffering=0)
            self._write_all(memoryview(FILE_HEADER))
            self._sync()
        log.debug("recording to %s (fsync=%s)", self.path, fsync)

    def _open_for_append(self) -> io.FileIO:
        reader = RecordReader(self.path)
        n = sum(1 for _ in reader)
        f = open(self.path, "r+b", buffering=0)
        if reader.truncated_tail:
            log.warning("%s: cutting a damaged tail of %d bytes (%s) before appending",
                        self.path, reader.bytes_skipped, reader.tail_reason)
            f.truncate(reader.good_bytes)
        f.seek(reader.good_bytes)
        log.debug("appending to %s after %d records", self.path, n)
        return f

    def write(self, parts: Sequence[BytesLike], t: float | None = None) -> int:
        """Append one multipart message received at ``t`` (default now); return bytes written."""
        views = [memoryview(p).cast("B") for p in parts]
        if len(views) > _U32_MAX:
            raise ValueError("too many parts for one record")
        body_len = sum(4 + v.nbytes for v in views)
        if body_len > _U32_MAX:
            raise ValueError(f"message of {body_len} bytes is too large for one record")
        t = time.time() if t is None else float(t)
        lens = [PART_LEN.pack(v.nbytes) for v in views]
        pre = struct.pack("<IdI", body_len, t, len(views))
        crc = zlib.crc32(pre)
        for ln, v in zip(lens, views, strict=True):
            crc = zlib.crc32(v, zlib.crc32(ln, crc))
        with self._lock:
            if self._f.closed:
                raise ValueError(f"{self.path}: writer is closed")
            start = self._f.tell()
            chunks: list[BytesLike] = [pre + PART_LEN.pack(crc)]
            for ln, v in zip(lens, views, strict=True):
                chunks += [ln, v]
            try:
                for chunk in _coalesce(chunks):
                    self._write_all(memoryview(chunk))
                self._sync()
            except OSError:
                # e.g. disk full: drop the partial record so later records stay readable.
                self._rollback(start)
                raise
            self.count += 1
            n = RECORD_HEADER_SIZE + body_len
            self.bytes_written += n
        return n

    def _write_all(self, data: memoryview) -> None:
        while data.nbytes:
            n = self._f.write(data)
            data = data[n:]

    def _rollback(self, pos: int) -> None:
        try:
            self._f.truncate(pos)
            self._f.seek(pos)
        except OSError:
            log.exception("%s: could not cut a partial record at byte %d", self.path, pos)

    def _sync(self) -> None:
        if self.fsync:
            os.fsync(self._f.fileno())

    def close(self) -> None:
        with self._lock:
            if not self._f.closed:
                self._sync()
                self._f.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _coalesce(chunks: list[BytesLike], small: int = 64 * 1024) -> Iterator[BytesLike]:
    """Join runs of small chunks so a record costs few write calls; big ones pass through."""
    run: list[BytesLike] = []
    for c in chunks:
        if len(c) < small:
            run.append(c)
            continue
        if run:
            yield b"".join(run)
            run = []
        yield c
    if run:
        yield b"".join(run)


# ----------------------------------------------------------------------------- reading

class RecordReader:
    """Iterate the records of a log, stopping cleanly at a truncated or corrupt tail.

    After iterating, ``truncated_tail`` says whether the file ended in damage, ``tail_reason``
    names it (``partial_header``, ``partial_body``, ``crc_mismatch``, ``oversized``,
    ``bad_parts``, ``bad_time``), ``good_bytes`` is the offset just past the last good record
    and ``bytes_skipped`` how many bytes after it were ignored. Raises :class:`RecordFormatError`
    on open if the file is not a record log. Each ``iter()`` starts again from the beginning.
    """

    def __init__(self, path: str | os.PathLike[str], *, max_parts: int = DEFAULT_MAX_PARTS,
                 max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> None:
        self.path = Path(path)
        self.max_parts = max_parts
        self.max_record_bytes = max_record_bytes
        self.truncated_tail = False
        self.tail_reason: str | None = None
        self.bytes_skipped = 0
        self.good_bytes = FILE_HEADER_SIZE
        self.records_read = 0
        with open(self.path, "rb") as f:
            _read_file_header(f, self.path)

    def __iter__(self) -> Iterator[Record]:
        self.truncated_tail, self.tail_reason, self.bytes_skipped = False, None, 0
        self.records_read = 0
        with open(self.path, "rb") as f:
            _read_file_header(f, self.path)
            offset = FILE_HEADER_SIZE
            while True:
                rec, reason, size = self._read_one(f)
                if rec is None:
                    self.good_bytes = offset
                    if reason is not None:
                        self._mark_tail(f, offset, reason)
                    return
                offset += size
                self.good_bytes = offset
                self.records_read += 1
                yield rec

    def _mark_tail(self, f: BinaryIO, offset: int, reason: str) -> None:
        self.truncated_tail = True
        self.tail_reason = reason
        self.bytes_skipped = max(0, os.fstat(f.fileno()).st_size - offset)
        log.warning("%s: damaged tail at byte %d (%s); %d bytes skipped after %d records",
                    self.path, offset, reason, self.bytes_skipped, self.records_read)

    def _read_one(self, f: BinaryIO) -> tuple[Record | None, str | None, int]:
        """Return (record, None, size), (None, None, 0) at a clean end, or (None, reason, 0)."""
        head = f.read(RECORD_HEADER_SIZE)
        if not head:
            return None, None, 0
        if len(head) < RECORD_HEADER_SIZE:
            return None, "partial_header", 0
        body_len, t, n_parts, crc = RECORD_HEADER.unpack(head)
        if n_parts > self.max_parts or body_len > self.max_record_bytes:
            return None, "oversized", 0
        if body_len < 4 * n_parts:
            return None, "bad_parts", 0
        # Check the size on disk before allocating: a corrupt length must not cost memory.
        remaining = os.fstat(f.fileno()).st_size - f.tell()
        if body_len > remaining:
            return None, "partial_body", 0
        body = f.read(body_len)
        if len(body) < body_len:
            return None, "partial_body", 0
        if zlib.crc32(body, zlib.crc32(head[:16])) != crc:
            return None, "crc_mismatch", 0
        if not math.isfinite(t):
            return None, "bad_time", 0
        parts = _split_body(body, n_parts)
        if parts is None:
            return None, "bad_parts", 0
        return Record(t, parts), None, RECORD_HEADER_SIZE + body_len

    def __enter__(self) -> RecordReader:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        return None


def _split_body(body: bytes, n_parts: int) -> list[bytes] | None:
    """Cut a record body into its parts; None unless the parts consume it exactly."""
    parts: list[bytes] = []
    pos, end = 0, len(body)
    for _ in range(n_parts):
        if pos + 4 > end:
            return None
        (n,) = PART_LEN.unpack_from(body, pos)
        pos += 4
        if pos + n > end:
            return None
        parts.append(body[pos:pos + n])
        pos += n
    return parts if pos == end else None


def read_records(path: str | os.PathLike[str]) -> list[Record]:
    """All good records of a log, in order (convenience for small files and tests)."""
    return list(RecordReader(path))
