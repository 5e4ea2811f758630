"""Restores from the store, driven by the partition's manifest: download → verify the sha256 the manifest recorded →
decrypt (age, with an identity among the manifest's recipients) → decompress → the target (today: Postgres, fed
through the exec API's stdin; no file lands on disk).

Verification order: into a scratch container the sha256 is verified while streaming (one download; a mismatch at
the end fails the restore and the scratch is thrown away). Into any other target the whole object is verified
first and then streamed again, so a corrupt object never touches a real database.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Iterator, Sequence

from .codec import decompress
from .crypt import Identity, decrypt, identities_for
from .manifest import Entry, Manifest
from .postgres import RestoreFailed, RestoreResult, restore_sql
from .store import BackupStore

if TYPE_CHECKING:
    import docker


def verified_download(store: BackupStore, key: str, expected_sha256: str) -> Iterator[bytes]:
    """The object's bytes; after the last chunk, raises RestoreFailed unless they hash to `expected_sha256`."""
    digest = hashlib.sha256()
    for chunk in store.download(key):
        digest.update(chunk)
        yield chunk
    if digest.hexdigest() != expected_sha256:
        raise RestoreFailed(f"{key}: the downloaded bytes hash to {digest.hexdigest()}, expected {expected_sha256}")


def verify_object(store: BackupStore, key: str, expected_sha256: str) -> int:
    """Download `key` and check its sha256; returns its size."""
    size = 0
    for chunk in verified_download(store, key, expected_sha256):
        size += len(chunk)
    return size


def plaintext(store: BackupStore, manifest: Manifest, entry: Entry, identities: Sequence[Identity]) \
        -> Iterator[bytes]:
    """The object's original bytes: verified against the manifest while downloading, decrypted, decompressed."""
    chunks: Iterator[bytes] = verified_download(store, entry.object_key, entry.sha256)
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
        verify_object(store, entry.object_key, entry.sha256)
    return restore_sql(api, container, plaintext(store, manifest, entry, identities), db_user=db_user, force=force,
                       key=entry.object_key)
