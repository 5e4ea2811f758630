"""Restores from the store, driven by the partition's (signed) manifest: download each object at the version the
manifest recorded (a version planted over it later is never read) → verify the sha256 the manifest recorded →
decrypt (age, with an identity among the manifest's recipients) → decompress → the target (today: Postgres, fed
through the exec API's stdin; no file lands on disk).

Verification order: into a scratch container the sha256 is verified while streaming (one download; a mismatch at
the end fails the restore and the scratch is thrown away). Into any other target the whole object is verified
first and then streamed again, so a corrupt object never touches a real database.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Sequence

from .codec import decompress
from .crypt import Identity, decrypt, identities_for
from .manifest import Entry, Manifest
from .postgres import RestoreFailed, RestoreRefused, RestoreResult, restore_sql
from .store import BackupStore, S3Source
from .stream import ChunkReader

if TYPE_CHECKING:
    import docker


def verified_download(store: BackupStore, key: str, expected_sha256: str, version_id: str = "") -> Iterator[bytes]:
    """The object's bytes (of `version_id`, when the manifest recorded one); after the last chunk, raises
    RestoreFailed unless they hash to `expected_sha256`."""
    digest = hashlib.sha256()
    for chunk in store.download(key, version_id=version_id):
        digest.update(chunk)
        yield chunk
    if digest.hexdigest() != expected_sha256:
        raise RestoreFailed(f"{key}: the downloaded bytes hash to {digest.hexdigest()}, expected {expected_sha256}")


def verify_object(store: BackupStore, key: str, expected_sha256: str, version_id: str = "") -> int:
    """Download `key` (at `version_id`, when given) and check its sha256; returns its size."""
    size = 0
    for chunk in verified_download(store, key, expected_sha256, version_id):
        size += len(chunk)
    return size


def plaintext(store: BackupStore, manifest: Manifest, entry: Entry, identities: Sequence[Identity]) \
        -> Iterator[bytes]:
    """The object's original bytes: verified against the manifest while downloading, decrypted, decompressed."""
    chunks: Iterator[bytes] = verified_download(store, entry.object_key, entry.sha256, entry.version_id)
    if manifest.encrypted:
        chunks = decrypt(chunks, identities_for(identities, manifest.recipients, entry.object_key))
    if manifest.compression in ("zstd", "gzip"):
        chunks = decompress(chunks, manifest.compression)
    return chunks


def restore_postgres(store: BackupStore, manifest: Manifest, identities: Sequence[Identity], api: docker.APIClient,
                     container: str, db_user: str = "postgres", force: bool = False,
                     verify_first: bool = True) -> RestoreResult:
    """Restore the partition's dump into the Postgres running in `container`. psql is silent while it works and
    stops reading stdin during a long statement (an index build), so the idle limit is hours, not minutes."""
    entry = manifest.objects[0]
    if verify_first:
        verify_object(store, entry.object_key, entry.sha256, entry.version_id)
    return restore_sql(api, container, plaintext(store, manifest, entry, identities), db_user=db_user, force=force,
                       key=entry.object_key)


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
