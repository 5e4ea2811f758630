"""Compression of backup streams (zstd, gzip), streamed both ways in bounded blocks, and how a key names its
compression."""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional

COMPRESSIONS = {"zstd": ".zst", "gzip": ".gz"}


ZSTD_LEVEL = 3  # the lowest level whose output stays at or below gzip -6's size on SQL dumps (bench/RESULTS.md)


@dataclass
class ByteCount:
    bytes: int = 0


def compress(chunks: Iterable[bytes], method: str = "zstd", level: Optional[int] = None,
             raw: Optional[ByteCount] = None) -> Iterator[bytes]:
    """Compressed `chunks`, streamed, in the calling thread (zstd and zlib release the GIL while they work).
    `raw` counts the uncompressed bytes."""
    if method == "zstd":
        import zstandard

        compressor = zstandard.ZstdCompressor(level=level or ZSTD_LEVEL, threads=0).compressobj()
    elif method == "gzip":
        compressor = zlib.compressobj(level or 6, zlib.DEFLATED, 31)
    else:
        raise ValueError(f"compression must be one of {', '.join(COMPRESSIONS)}, got {method!r}")
    for chunk in chunks:
        if raw is not None:
            raw.bytes += len(chunk)
        out = compressor.compress(chunk)
        if out:
            yield out
    tail = compressor.flush()
    if tail:
        yield tail


class _ChunkReader(io.RawIOBase):
    """A readable file over an iterator of byte chunks (what zstandard's stream_reader reads from)."""

    def __init__(self, chunks: Iterable[bytes]):
        self._chunks, self._buf = iter(chunks), b""

    def readable(self) -> bool:
        return True

    def readinto(self, target) -> int:
        while not self._buf:
            try:
                self._buf = next(self._chunks)
            except StopIteration:
                return 0
        n = min(len(target), len(self._buf))
        target[:n], self._buf = self._buf[:n], self._buf[n:]
        return n


DECOMPRESSED_BLOCK = 1 << 20


def decompress(chunks: Iterable[bytes], method: str) -> Iterator[bytes]:
    """Decompressed blocks of at most 1 MiB each, whatever the compression ratio (a highly compressible dump must not
    become one huge bytes object)."""
    if method == "zstd":
        import zstandard

        with zstandard.ZstdDecompressor().stream_reader(_ChunkReader(chunks), read_across_frames=True) as reader:
            while block := reader.read(DECOMPRESSED_BLOCK):
                yield block
        return
    if method != "gzip":
        raise ValueError(f"compression must be one of {', '.join(COMPRESSIONS)}, got {method!r}")
    decompressor = zlib.decompressobj(31)
    for chunk in chunks:
        pending = chunk
        while pending:
            out = decompressor.decompress(pending, DECOMPRESSED_BLOCK)
            if out:
                yield out
            pending = decompressor.unconsumed_tail
    tail = decompressor.flush()
    if tail:
        yield tail
    if not decompressor.eof:
        raise ValueError("the gzip stream is truncated")


def compression_of(key: str) -> str:
    for method, ext in COMPRESSIONS.items():
        if key.endswith(ext):
            return method
    raise ValueError(f"{key}: cannot tell the compression from the name (expected {', '.join(COMPRESSIONS.values())})")
