"""Retention: where it is decided (`plan_retention`, pure: which objects of one target's prefix to delete) and
applied (`prune`, the only caller of the store's delete for retention).

Only keys under the target's prefix are ever considered (retention by prefix, never by bucket); a key's date is the
partition date it carries (`<prefix>YYYY-MM-DD/...`), not its upload time, so a backfill ages like the day it
backs up. A day is a successful backup when it holds its manifest. Objects older than the window go — except the
newest successful backup of the target, which stays even when it is older than the window (a host that stopped
backing up must not lose its last backup to the calendar).

In a versioned bucket (every bucket with Object Lock is one) a delete without a version id only adds a delete
marker and frees nothing, so retention deletes versions, one call each, and counts a delete marker as no deletion
at all: the versions under it age by their day like any other. A version the store refuses to delete (its Object
Lock date not reached) is kept and reported.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Iterable, Optional, Protocol

from ...settings import BackupTarget
from .client import BackupStore
from .keys import CONTENT_FOLDER, MANIFEST_NAME, key_date
from .objects import StoreError


class Listed(Protocol):
    key: str


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
        if not obj.key.startswith(prefix) or obj.key.startswith(prefix + CONTENT_FOLDER):
            continue  # stored content belongs to the days that name it: prune_content
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


def prune(store: BackupStore, target: BackupTarget, today: datetime.date, keep: set[str], log) -> int:
    """Apply the target's retention to its prefix (never the newest successful backup, never `keep`). A store
    error here is logged, not raised: the backup that was just made stands; the next run prunes again."""
    try:
        if store.versioned():
            return _prune_versions(store, target, today, keep, log)
        plan = plan_retention(target.prefix, target.retention_days, today, store.list(target.prefix),
                              MANIFEST_NAME, keep)
        if plan.delete:
            dates = sorted({k[len(target.prefix):len(target.prefix) + 10] for k in plan.delete})
            log.info(f"retention {target.retention_days} days: deleting {len(plan.delete)} objects of "
                     f"{', '.join(dates)} under {target.prefix}")
            store.delete_objects(plan.delete)
    except StoreError as exc:
        log.error(f"retention of {target.prefix} failed (the backup itself is kept): {exc}")
        return -1
    if plan.undated:
        log.warning(f"{len(plan.undated)} objects under {target.prefix} carry no partition date and are kept: "
                    f"{', '.join(plan.undated[:5])}")
    return len(plan.delete)


def _prune_versions(store: BackupStore, target: BackupTarget, today: datetime.date, keep: set[str], log) -> int:
    """Retention in a versioned bucket: every version (and delete marker) of an expired key deleted by its version
    id; refusals (Object Lock) logged and kept. Returns how many versions were deleted."""
    versions = list(store.versions(target.prefix))
    plan = plan_retention(target.prefix, target.retention_days, today,
                          [v for v in versions if not v.delete_marker], MANIFEST_NAME, keep)
    doomed = set(plan.delete) | {v.key for v in versions if v.delete_marker and _expired(v.key, target, plan)}
    deleted = _delete_versions(store, versions, doomed, log)
    if deleted:
        log.info(f"retention {target.retention_days} days: deleted {deleted} versions under {target.prefix}")
    return deleted


def _delete_versions(store: BackupStore, versions, doomed: set[str], log) -> int:
    """Every version of the `doomed` keys deleted by its version id; refusals (Object Lock) logged and kept.
    Returns how many were deleted."""
    deleted, refused = 0, []
    for version in versions:
        if version.key not in doomed:
            continue
        reason = store.delete_version(version.key, version.version_id)
        if reason is None:
            deleted += 1
        else:
            refused.append(f"{version.key} (version {version.version_id}): {reason}")
    if refused:
        log.warning(f"retention: the store kept {len(refused)} versions it refused to delete (Object Lock until "
                    f"their date): {'; '.join(refused[:5])}")
    return deleted


def _expired(key: str, target: BackupTarget, plan: RetentionPlan) -> bool:
    day = key_date(key, target.prefix)
    return day is not None and day < plan.cutoff and day != plan.kept_newest


CONTENT_GRACE = datetime.timedelta(days=1)  # a backup in progress has stored content its manifest does not name yet


def prune_content(store: BackupStore, prefix: str, log, grace: datetime.timedelta = CONTENT_GRACE) -> int:
    """Delete stored content (`<prefix>objects/`) that no kept day's manifest names, once older than `grace`.
    Nothing is deleted when a manifest cannot be read (what it names is unknown). Logged, never raised."""
    from .manifest import read_manifests

    try:
        listed = list(store.list(prefix))
        manifests = [o.key for o in listed if o.key.endswith(f"/{MANIFEST_NAME}") and key_date(o.key, prefix)]
        named: set[str] = set()
        for key, read in read_manifests(store, manifests).items():
            if read.manifest is None:
                log.warning(f"stored content under {prefix}{CONTENT_FOLDER} not pruned: {read.error}")
                return 0
            named.update(e.object_key for e in read.manifest.objects)
        now = datetime.datetime.now(datetime.timezone.utc)
        doomed = [o.key for o in listed if o.key.startswith(prefix + CONTENT_FOLDER) and o.key not in named
                  and now - o.last_modified > grace]
        if not doomed:
            return 0
        log.info(f"retention: deleting {len(doomed)} stored objects under {prefix}{CONTENT_FOLDER} that no kept day "
                 f"names")
        if store.versioned():
            return _delete_versions(store, list(store.versions(prefix + CONTENT_FOLDER)), set(doomed), log)
        store.delete_objects(doomed)
        return len(doomed)
    except StoreError as exc:
        log.error(f"retention of {prefix}{CONTENT_FOLDER} failed (the backup itself is kept): {exc}")
        return -1
