"""One backup stream: producer → compressor → multipart upload, in constant memory, no temp file; sha256 and byte
counts computed on the way. A failed producer or store aborts the upload and leaves no object."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable, Mapping, Optional

from .codec import ByteCount, compress
from .store import BackupStore


@dataclass(frozen=True)
class BackupResult:
    key: str
    raw_bytes: int
    bytes: int  # stored (compressed) bytes
    sha256: str  # of the stored object
    etag: str
    duration_s: float
    compression: str

    @property
    def throughput_mb_s(self) -> float:
        """Uncompressed MB (10^6 bytes) processed per second."""
        return round(self.raw_bytes / 1e6 / self.duration_s, 3) if self.duration_s > 0 else 0.0


def stream_backup(store: BackupStore, key: str, chunks: Iterable[bytes], compression: str = "zstd",
                  metadata: Optional[Mapping[str, str]] = None) -> BackupResult:
    """Compress `chunks` into the object `key`. Raises (and leaves no object) if the producer or the store fails.
    (A producer from exec_chunks reads ahead in a thread of its own, so the process keeps writing while this
    thread compresses, hashes and uploads a part.)"""
    started = time.monotonic()
    raw = ByteCount()
    up = store.upload_stream(key, compress(chunks, compression, raw=raw),
                             metadata={**(metadata or {}), "compression": compression})
    return BackupResult(key, raw.bytes, up.bytes, up.sha256, up.etag, time.monotonic() - started, compression)
