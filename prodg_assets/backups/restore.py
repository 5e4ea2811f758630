"""Restores from the store: download → verify sha256 → decompress → the target (today: Postgres, fed through the exec
API's stdin; no file lands on disk).

Verification order: into a scratch container the sha256 is verified while streaming (one download; a mismatch at
the end fails the restore and the scratch is thrown away). Into any other target the whole object is verified
first and then streamed again, so a corrupt object never touches a real database.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Iterator

from .codec import compression_of, decompress
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


def restore_object(store: BackupStore, key: str, expected_sha256: str, api: docker.APIClient, container: str,
                   db_user: str = "postgres", force: bool = False, verify_first: bool = True) -> RestoreResult:
    """Restore the dump `key` into the Postgres running in `container`. psql is silent while it works and stops
    reading stdin during a long statement (an index build), so the idle limit is hours, not minutes."""
    if verify_first:
        verify_object(store, key, expected_sha256)
    chunks = decompress(verified_download(store, key, expected_sha256), compression_of(key))
    return restore_sql(api, container, chunks, db_user=db_user, force=force, key=key)
