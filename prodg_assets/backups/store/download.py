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
from typing import TYPE_CHECKING, Iterator, Sequence

from ..format.codec import decompress
from ..format.crypt import Identity, decrypt, identities_for
from .client import BackupStore
from .manifest import Entry, Manifest

if TYPE_CHECKING:
    pass


class RestoreFailed(Exception):
    """A restore that did not complete: an object that does not verify, or a target that failed."""


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
