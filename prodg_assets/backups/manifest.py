"""The manifest of a backup partition: what the day holds and where it came from — each object's key, raw and stored
bytes, sha256 of the stored bytes and ETag; the encryption recipients' fingerprints; when the data was captured
(`captured_at`, and `captured_late` when a past day was captured afterwards); the commit deployed on the host; the
source container, image and image digest. Written last, as `<prefix><day>/manifest.json`, so its presence marks the
partition complete. Plain JSON: it holds no data, and the audit reads it without the identity."""

from __future__ import annotations

import datetime
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Optional

from .keys import manifest_key
from .store import BackupStore, ObjectLock, StoreError, UploadResult

FORMAT = 2


class ManifestError(ValueError):
    """A manifest that cannot be read or does not parse; the message names its key."""


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


def write_manifest(store: BackupStore, prefix: str, manifest: Manifest,
                   lock: Optional[ObjectLock] = None) -> UploadResult:
    """Write the partition's manifest (last: it marks the partition complete)."""
    return store.put_bytes(manifest_key(prefix, manifest.partition), manifest.to_json(),
                           metadata={"partition": manifest.partition, "captured-at": manifest.captured_at},
                           content_type="application/json", lock=lock)


def read_manifest(store: BackupStore, prefix: str, day: str) -> Optional[Manifest]:
    """The partition's manifest, or None when the partition has none (incomplete, or never backed up)."""
    key = manifest_key(prefix, day)
    try:
        raw = store.read_bytes(key)
    except StoreError as exc:
        if "NoSuchKey" in str(exc) or "HTTP 404" in str(exc):
            return None
        raise
    return Manifest.from_json(raw, key)
