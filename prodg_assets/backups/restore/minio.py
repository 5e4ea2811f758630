"""MinIO, written by a restore: each object of a partition's mirror, verified and decrypted, put back into a bucket."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Sequence

from ..format.crypt import Identity
from ..store.client import BackupStore, S3Source
from ..store.download import RestoreFailed, plaintext
from ..store.manifest import Manifest
from ..store.stream import ChunkReader
from .postgres import RestoreRefused

if TYPE_CHECKING:
    pass


@dataclass(frozen=True)
class RestoredObjects:
    objects: int
    bytes: int
    buckets: tuple[str, ...]


def restore_minio(store: BackupStore, manifest: Manifest, identities: Sequence[Identity], source: S3Source,
                  to_bucket: str = "", only: str = "", force: bool = False) -> RestoredObjects:
    """The day's MinIO objects put back through MinIO's S3 API: into their own buckets, or all into `to_bucket`;
    only those whose `bucket/key` starts with `only`. An object already there is refused (before anything is
    written) unless `force`. Each object's bytes are checked against the content sha256 the manifest recorded as
    they are uploaded; one that differs is deleted again and the restore fails."""
    wanted = [e for e in manifest.objects if f"{e.bucket}/{e.key}".startswith(only)]
    if not wanted:
        raise RestoreFailed(f"no object of {manifest.partition} matches {only!r}")
    dest = [(to_bucket or e.bucket, e.key, e) for e in wanted]
    if not force:
        there = [f"{b}/{k}" for b, k, _ in dest if source.exists(b, k)]
        if there:
            raise RestoreRefused(f"{len(there)} objects already exist in MinIO ({', '.join(there[:5])}); nothing was "
                                 f"written (give --force to overwrite them, or --to another bucket)")
    total = 0
    for bucket in sorted({b for b, _, _ in dest}):
        source.ensure_bucket(bucket)
    for bucket, key, entry in dest:
        digest = hashlib.sha256()

        def hashed(chunks: Iterator[bytes]) -> Iterator[bytes]:
            for chunk in chunks:
                digest.update(chunk)
                yield chunk

        source.put_stream(bucket, key, ChunkReader(hashed(plaintext(store, manifest, entry, identities))))
        if entry.content_sha256 and digest.hexdigest() != entry.content_sha256:
            source.client.delete_object(Bucket=bucket, Key=key)
            raise RestoreFailed(f"{bucket}/{key}: the restored bytes hash to {digest.hexdigest()}, the backup "
                                f"recorded {entry.content_sha256}")
        total += entry.raw_bytes
    return RestoredObjects(len(dest), total, tuple(sorted({b for b, _, _ in dest})))
