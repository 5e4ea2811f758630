"""Object keys of the backups: every key starts with `<prefix><partition date>/`, so a key says its target and its
day, and retention and the audit read the day back from the key alone."""

from __future__ import annotations

import datetime
import re
from typing import Optional

from ..format.codec import COMPRESSIONS

MANIFEST_NAME = "manifest.json"
CONTENT_FOLDER = "objects/"  # under the MinIO target's prefix: objects stored once by content, referenced by days
ENCRYPTED = ".age"  # the suffix of an object encrypted in the age format
_DATE = re.compile(r"^(\d{4}-\d{2}-\d{2})/")


def postgres_key(prefix: str, date: str, at: datetime.datetime, compression: str, encrypted: bool) -> str:
    return f"{prefix}{date}/pg_dumpall-{at:%H%M%S}.sql{COMPRESSIONS[compression]}{ENCRYPTED if encrypted else ''}"


def config_key(prefix: str, date: str, commit: str, compression: str, encrypted: bool) -> str:
    return (f"{prefix}{date}/config-{(commit or 'worktree')[:12]}.tar{COMPRESSIONS[compression]}"
            f"{ENCRYPTED if encrypted else ''}")


def archive_key(prefix: str, date: str, at: datetime.datetime, stem: str, suffix: str, compression: str,
                encrypted: bool) -> str:
    """A day's one object: a service's data (`<name>-HHMMSS.tar…`) or the secrets file (`secrets-….env…`)."""
    return f"{prefix}{date}/{stem}-{at:%H%M%S}{suffix}{COMPRESSIONS[compression]}{ENCRYPTED if encrypted else ''}"


def mirror_key(prefix: str, date: str, bucket: str, key: str, encrypted: bool) -> str:
    return f"{prefix}{date}/{bucket}/{key}{ENCRYPTED if encrypted else ''}"


def content_key(prefix: str, content_sha256: str, encrypted: bool) -> str:
    """Where an object whose plaintext hashes to `content_sha256` is stored, once, for every day that holds it."""
    return f"{prefix}{CONTENT_FOLDER}{content_sha256[:2]}/{content_sha256}{ENCRYPTED if encrypted else ''}"


def mirror_base(prefix: str, date: str) -> str:
    return f"{prefix}{date}/"


def manifest_key(prefix: str, date: str) -> str:
    return f"{mirror_base(prefix, date)}{MANIFEST_NAME}"


def key_date(key: str, prefix: str) -> Optional[datetime.date]:
    """The partition date of `key` under `prefix`, or None when the key is not `<prefix>YYYY-MM-DD/...`."""
    if not key.startswith(prefix):
        return None
    match = _DATE.match(key[len(prefix):])
    if not match:
        return None
    try:
        return datetime.date.fromisoformat(match.group(1))
    except ValueError:
        return None
