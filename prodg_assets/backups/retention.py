"""Retention arithmetic, pure: which objects of one target's prefix to delete.

Only keys under the target's prefix are ever considered (retention by prefix, never by bucket); a key's date is the
partition date it carries (`<prefix>YYYY-MM-DD/...`), not its upload time, so a backfill ages like the day it
backs up. Objects older than the window go — except the newest successful backup of the target, which stays even
when it is older than the window (a host that stopped backing up must not lose its last backup to the calendar).
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from typing import Iterable, Optional, Protocol

_DATE = re.compile(r"^(\d{4}-\d{2}-\d{2})/")


class Listed(Protocol):
    key: str


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


@dataclass(frozen=True)
class RetentionPlan:
    prefix: str
    cutoff: datetime.date  # dates before it are outside the window
    delete: tuple[str, ...]
    kept_newest: Optional[datetime.date]  # the newest successful backup's date (never deleted)
    undated: tuple[str, ...]  # keys under the prefix without a partition date: never deleted, reported


def plan_retention(prefix: str, retention_days: int, today: datetime.date, objects: Iterable[Listed],
                   complete_marker: Optional[str] = None, keep: Iterable[str] = ()) -> RetentionPlan:
    """Keys of `objects` to delete under `prefix`: those whose partition date is more than `retention_days` before
    `today`. A date counts as a successful backup when it holds an object — or, with `complete_marker` (e.g.
    "manifest.json" for the object-level mirror), an object whose name ends with that marker; every object of the
    newest such date is kept. Keys in `keep` are kept too."""
    if retention_days < 1:
        raise ValueError(f"retention for {prefix!r} must keep at least one day, got {retention_days}")
    if not prefix or not prefix.endswith("/"):
        raise ValueError(f"a retention prefix must be non-empty and end with '/', got {prefix!r}")
    cutoff = today - datetime.timedelta(days=retention_days)
    dated: list[tuple[datetime.date, str]] = []
    undated: list[str] = []
    successful: set[datetime.date] = set()
    for obj in objects:
        if not obj.key.startswith(prefix):
            continue
        day = key_date(obj.key, prefix)
        if day is None:
            undated.append(obj.key)
            continue
        dated.append((day, obj.key))
        if complete_marker is None or obj.key.endswith("/" + complete_marker):
            successful.add(day)
    newest = max(successful) if successful else None
    protected = set(keep)
    delete = sorted(key for day, key in dated if day < cutoff and day != newest and key not in protected)
    return RetentionPlan(prefix, cutoff, tuple(delete), newest, tuple(sorted(undated)))


def keys_to_delete(prefix: str, retention_days: int, today: datetime.date, objects: Iterable[Listed],
                   complete_marker: Optional[str] = None, keep: Iterable[str] = ()) -> list[str]:
    return list(plan_retention(prefix, retention_days, today, objects, complete_marker, keep).delete)
