"""The manifest of a backup partition: what the day holds and where it came from — each object's key, raw and stored
bytes, sha256 of the stored bytes and ETag; the encryption recipients' fingerprints; when the data was captured
(`captured_at`, and `captured_late` when a past day was captured afterwards); the commit deployed on the host; the
source container, image and image digest; each object's S3 version id (a version written over it later is never
read). Written last, as `<prefix><day>/manifest.json`, so its presence marks the partition complete. Plain JSON (it
holds no data), signed by the host (backups/format/signing.py; the signature and its signer in the object's user
metadata, so one GET reads both): every reader goes through `read_manifest`/`open_manifest`, which refuse a manifest
no trusted signer signed — a day planted by whoever can write to the bucket is never restored, drilled or counted."""

from __future__ import annotations

import datetime
import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping, Optional

from ...agekeys import AgeError
from ..format.signing import ManifestSigner, SigningError, TrustedSigners, host_signer
from .client import BackupStore
from .keys import manifest_key
from .objects import ObjectLock, StoreError, UploadResult

FORMAT = 3  # 3: signed, objects with their version ids; 2 (unsigned) is refused as untrusted
SIGNATURE_META = "prodg-signature"  # user metadata of the manifest object: the base64 Ed25519 signature
SIGNER_META = "prodg-signer"  # and the key that made it (a `backups.signers` value)


class ManifestError(ValueError):
    """A manifest that cannot be read or does not parse; the message names its key."""


class UntrustedManifest(ManifestError):
    """A manifest no trusted signer signed: planted, altered, or written before manifests were signed."""


@dataclass(frozen=True)
class Entry:
    """One stored object of the partition. For the MinIO mirror, `bucket`/`key` name the source object."""

    object_key: str
    raw_bytes: int
    bytes: int  # stored (compressed, encrypted) bytes
    sha256: str  # of the stored bytes
    etag: str
    bucket: str = ""
    key: str = ""
    source_etag: str = ""
    content_sha256: str = ""  # MinIO: the sha256 of the object's own bytes (its stored object is named after it)
    version_id: str = ""  # the stored object's S3 version, read by restores ("" when the bucket keeps no versions)


@dataclass(frozen=True)
class Manifest:
    target: str
    partition: str  # the day, YYYY-MM-DD (UTC)
    captured_at: str  # the UTC instant the data was read from its source (ISO 8601)
    commit: str  # the commit deployed on the host when the data was captured
    commit_source: str  # where that commit was read ("deployed", "run tag", "branch head")
    source: str
    image_id: str
    image_digest: str
    compression: str
    recipients: tuple[str, ...]  # fingerprints of the age recipients; () = stored unencrypted
    objects: tuple[Entry, ...]
    captured_late: bool = False  # the day was over before its data was captured (a forced late backfill)
    object_lock: str = ""  # "GOVERNANCE until 2026-12-30T00:00:00+00:00", "" when the bucket has none
    extra: Mapping[str, Any] = field(default_factory=dict)  # per target: row counts, buckets …
    format: int = FORMAT

    @property
    def encrypted(self) -> bool:
        return bool(self.recipients)

    @property
    def raw_bytes(self) -> int:
        return sum(e.raw_bytes for e in self.objects)

    @property
    def bytes(self) -> int:
        return sum(e.bytes for e in self.objects)

    @property
    def captured(self) -> datetime.datetime:
        return datetime.datetime.fromisoformat(self.captured_at)

    @property
    def captured_on(self) -> str:
        return self.captured.date().isoformat()

    def to_json(self) -> bytes:
        data = asdict(self)
        data["objects"] = [asdict(e) for e in self.objects]
        data["recipients"] = list(self.recipients)
        return json.dumps(data, indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes, key: str = "manifest") -> "Manifest":
        try:
            data = json.loads(raw)
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                raise ValueError(f"format {data.get('format') if isinstance(data, dict) else '?'}, "
                                 f"expected {FORMAT}")
            objects = tuple(Entry(**e) for e in data.pop("objects"))
            return cls(**{**data, "objects": objects, "recipients": tuple(data.get("recipients") or ())})
        except (ValueError, TypeError, KeyError) as exc:
            raise ManifestError(f"{key}: not a prodg backup manifest ({exc})") from None


def manifest_signer(store: BackupStore) -> ManifestSigner:
    """The key this host signs its manifests with (from the store's identity file); raises SigningError naming
    PRODG_BACKUP_IDENTITY when there is none. A backup asks for it before it uploads anything."""
    return host_signer(store.identity_file)


def write_manifest(store: BackupStore, prefix: str, manifest: Manifest, lock: Optional[ObjectLock] = None,
                   signer: Optional[ManifestSigner] = None) -> UploadResult:
    """Write the partition's manifest (last: it marks the partition complete), signed by `signer` (else the
    store's host key)."""
    key, raw = manifest_key(prefix, manifest.partition), manifest.to_json()
    signer = signer or manifest_signer(store)
    return store.put_bytes(key, raw, metadata={"partition": manifest.partition, "captured-at": manifest.captured_at,
                                               SIGNATURE_META: signer.sign(key, raw), SIGNER_META: signer.text},
                           content_type="application/json", lock=lock)


def trusted_signers(store: BackupStore) -> TrustedSigners:
    """Whose manifests `store`'s readers believe: prodg.yaml's `backups.signers` and the host's own key."""
    try:
        return TrustedSigners.of(store.signers, store.identity_file)
    except (SigningError, AgeError) as exc:
        raise ManifestError(f"the trusted manifest signers cannot be read: {exc}") from None


def open_manifest(key: str, raw: bytes, metadata: Mapping[str, str], trust: TrustedSigners) -> Manifest:
    """The manifest stored as `key` — the one place a manifest is believed: raises UntrustedManifest unless a
    trusted signer signed these bytes at this key, ManifestError when it does not parse."""
    why = trust.check(key, raw, str(metadata.get(SIGNATURE_META) or ""), str(metadata.get(SIGNER_META) or ""))
    if why is not None:
        raise UntrustedManifest(
            f"{key}: not signed by a trusted signer ({why}): planted by whoever can write to the bucket, or written "
            f"before prodg signed its manifests; nothing of that day is restored, drilled or counted (a day known to "
            f"be genuine restores by hand: docs/OPERATIONS.md, \"Restore without prodg\"; a host's key belongs "
            f"under backups.signers: `prodg backup-signer` prints it)")
    return Manifest.from_json(raw, key)


def read_manifest(store: BackupStore, prefix: str, day: str) -> Optional[Manifest]:
    """The partition's manifest, or None when the partition has none (incomplete, or never backed up); raises
    ManifestError (UntrustedManifest) for one no trusted signer signed."""
    key = manifest_key(prefix, day)
    try:
        raw, metadata = store.read_with_metadata(key)
    except StoreError as exc:
        if "NoSuchKey" in str(exc) or "HTTP 404" in str(exc):
            return None
        raise
    return open_manifest(key, raw, metadata, trusted_signers(store))


MANIFEST_READERS = 8  # manifests fetched at once


@dataclass(frozen=True)
class ManifestRead:
    """One manifest as read from the store: believed (signed by a trusted signer), or why not."""

    manifest: Optional[Manifest]
    sha256: str
    error: str = ""
    untrusted: bool = False  # no trusted signer signed it


def read_one(store: BackupStore, key: str, trust: TrustedSigners) -> ManifestRead:
    try:
        raw, metadata = store.read_with_metadata(key)
    except StoreError as exc:
        return ManifestRead(None, "", f"{key} cannot be read: {exc}")
    sha = hashlib.sha256(raw).hexdigest()
    try:
        return ManifestRead(open_manifest(key, raw, metadata, trust), sha)
    except ManifestError as exc:
        return ManifestRead(None, sha, str(exc), isinstance(exc, UntrustedManifest))


def read_manifests(store: BackupStore, keys: Iterable[str]) -> dict[str, ManifestRead]:
    """Each manifest of `keys` with one GET, as `read_manifest` believes it (signed by a trusted signer) — or why
    not. Raises ManifestError only when the trusted signers themselves cannot be read."""
    keys = list(keys)
    if not keys:
        return {}
    trust = trusted_signers(store)
    with ThreadPoolExecutor(max_workers=min(MANIFEST_READERS, len(keys))) as pool:
        return dict(zip(keys, pool.map(lambda k: read_one(store, k, trust), keys)))
