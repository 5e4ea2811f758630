"""What the store's calls take and give back: objects as listed, headed and versioned, an Object Lock request, an
upload's result, the one StoreError, and the small request/answer helpers the client and the upload share."""

from __future__ import annotations

import base64
import datetime
import hashlib
from dataclasses import dataclass, field
from typing import Mapping, Optional

MIB = 1024 * 1024
MIN_PART_BYTES = 5 * MIB  # S3's minimum for every part but the last


class StoreError(Exception):
    """An S3 call failed. The message names the operation, bucket and key; it never carries credentials."""


@dataclass(frozen=True)
class StoredObject:
    """One object as a listing shows it."""

    key: str
    size: int
    etag: str
    last_modified: datetime.datetime


@dataclass(frozen=True)
class ObjectHead:
    key: str
    size: int
    etag: str
    last_modified: datetime.datetime
    metadata: Mapping[str, str] = field(default_factory=dict)
    lock_mode: str = ""  # GOVERNANCE | COMPLIANCE when the object is under Object Lock
    retain_until: Optional[datetime.datetime] = None
    version_id: str = ""  # "" when the bucket keeps no versions


@dataclass(frozen=True)
class ObjectVersion:
    """One version (or delete marker) as ListObjectVersions shows it, in a versioned bucket."""

    key: str
    version_id: str
    size: int
    last_modified: datetime.datetime
    latest: bool
    delete_marker: bool = False


@dataclass(frozen=True)
class ObjectLock:
    """What an upload asks of a bucket with Object Lock: no version may be deleted or overwritten before
    `retain_until` (GOVERNANCE: unless the caller holds s3:BypassGovernanceRetention; COMPLIANCE: by no one)."""

    mode: str
    retain_until: datetime.datetime

    def params(self) -> dict:
        return {"ObjectLockMode": self.mode, "ObjectLockRetainUntilDate": self.retain_until}


@dataclass(frozen=True)
class UploadResult:
    key: str
    bytes: int
    sha256: str
    etag: str
    parts: int
    duration_s: float
    version_id: str = ""  # the version written, in a versioned bucket (what a manifest names and a restore reads)


@dataclass(frozen=True)
class MultipartInProgress:
    key: str
    upload_id: str
    initiated: Optional[datetime.datetime]


def content_md5(body: bytes) -> dict:
    """Content-MD5 of a request body: S3 requires it on every write under Object Lock (boto3 sends it only when
    asked, as request checksums are off: see `client`)."""
    return {"ContentMD5": base64.b64encode(hashlib.md5(body).digest()).decode()}


def etag_of(value: str) -> str:
    return (value or "").strip('"')


def version_of(resp: Mapping) -> str:
    """The version id an S3 answer names; "" for none (an unversioned bucket's "null" included)."""
    version = str(resp.get("VersionId") or "")
    return "" if version == "null" else version


def at_version(version_id: str) -> dict:
    return {"VersionId": version_id} if version_id else {}
