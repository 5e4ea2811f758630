"""One backup stream: producer → compressor → age encryption → multipart upload, in constant memory, no temp file;
sha256 and byte counts computed on the way. A failed producer or store aborts the upload and leaves no object."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping, Optional, Sequence

from ..format.codec import ByteCount, compress
from ..format.crypt import Recipient, encrypt
from .client import BackupStore
from .manifest import Entry
from .objects import ObjectLock


@dataclass(frozen=True)
class BackupResult:
    key: str
    raw_bytes: int
    bytes: int  # stored (compressed) bytes
    sha256: str  # of the stored object
    etag: str
    duration_s: float
    compression: str
    version_id: str = ""  # the version written, in a versioned bucket

    def entry(self, **source) -> Entry:
        """The object as its partition's manifest lists it."""
        return Entry(self.key, self.raw_bytes, self.bytes, self.sha256, self.etag, **source,
                     version_id=self.version_id)

    @property
    def throughput_mb_s(self) -> float:
        """Uncompressed MB (10^6 bytes) processed per second."""
        return round(self.raw_bytes / 1e6 / self.duration_s, 3) if self.duration_s > 0 else 0.0


def stream_backup(store: BackupStore, key: str, chunks: Iterable[bytes], compression: str = "zstd",
                  metadata: Optional[Mapping[str, str]] = None, recipients: Sequence[Recipient] = (),
                  lock: Optional[ObjectLock] = None) -> BackupResult:
    """Compress `chunks` — and encrypt them to `recipients`, when there are any — into the object `key` (under
    `lock` where given). Raises (and leaves no object) if the producer or the store fails. (A producer from
    exec_chunks reads ahead in a thread of its own, so the process keeps writing while this thread compresses,
    encrypts, hashes and hands a part to the uploader thread.)"""
    started = time.monotonic()
    raw = ByteCount()
    data = compress(chunks, compression, raw=raw)
    if recipients:
        data = encrypt(data, recipients)
    up = store.upload_stream(key, data, metadata={**(metadata or {}), "compression": compression,
                                                  "encryption": "age" if recipients else "none"}, lock=lock)
    return BackupResult(key, raw.bytes, up.bytes, up.sha256, up.etag, time.monotonic() - started, compression,
                        up.version_id)


class ChunkReader:
    """A file object over an iterator of byte chunks (what tarfile's stream mode reads), copying each byte once."""

    def __init__(self, chunks: Iterator[bytes]):
        self._chunks, self._chunk, self._at = chunks, b"", 0

    def read(self, n: int = -1) -> bytes:
        parts, wanted = [], n
        while wanted != 0:
            if self._at >= len(self._chunk):
                chunk = next(self._chunks, None)
                if chunk is None:
                    break
                self._chunk, self._at = chunk, 0
                continue
            end = len(self._chunk) if wanted < 0 else min(len(self._chunk), self._at + wanted)
            parts.append(self._chunk[self._at:end])
            wanted = wanted - (end - self._at) if wanted > 0 else wanted
            self._at = end
        return b"".join(parts)
