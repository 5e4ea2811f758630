"""Audits of the backup store, driven by the partitions' manifests.

Evidence, so that a year of partitions costs listings plus at most one small GET per partition:
- One ListObjectsV2 listing of a target's prefix gives each object's key, size and ETag.
- Each day's manifest (`<prefix><day>/manifest.json`, a few hundred bytes) names the objects the day holds with the
  size and ETag they were uploaded with (and their sha256, the captured_at instant, the commit). A day without its
  manifest is incomplete or missing; an object missing from the listing, or listed with another size or ETag, was
  deleted or rewritten after the backup (an ETag is an MD5 of the bytes, or of the part MD5s).
- The materialisation recorded the manifest's own sha256: a manifest rewritten after the backup is caught too.
- A manifest no trusted signer signed (backups/format/signing.py; the signature comes with the same GET) is a planted or
  unsigned day: UNTRUSTED, never counted as a backup.
- Freshness is the newest manifest's `captured_at`, never the store's LastModified (an overwrite of an old day's
  object would otherwise count as the newest backup).
The partition check (`check_partition`, one day) does the same for its day; `deep=True` also downloads every object
and compares its sha256 with the manifest's.
"""

from __future__ import annotations

import datetime
from collections import Counter
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

from ..store.client import BackupStore
from ..store.keys import MANIFEST_NAME, key_date, manifest_key
from ..store.manifest import (
    ManifestRead,
    read_manifests,
    read_one,
    trusted_signers,
)
from ..store.objects import StoredObject

OK = "ok"
LATE = "captured_late"  # complete, captured after its day was over (a forced backfill): reported, not a failure
MISSING = "missing"  # no backup at all for the day
INCOMPLETE = "incomplete"  # objects for the day, but no manifest: a backup that never finished
GONE = "gone"  # an object the manifest names is not in the store
SIZE = "size_mismatch"
ETAG = "etag_mismatch"  # the object was rewritten after the backup
SHA256 = "sha256_mismatch"  # deep check: the bytes do not hash to the manifest's sha256
MANIFEST = "manifest_mismatch"  # the manifest is unreadable, or not the one the materialisation recorded
UNTRUSTED = "untrusted"  # the manifest is not signed by a trusted signer: a planted (or pre-signing) day
UNRECORDED = "unrecorded"  # complete in the store, but no materialisation recorded it (reported, not a failure)
EXPIRED = "expired"  # older than the retention window and gone, as it should be
NOT_PROBLEMS = (OK, LATE, UNRECORDED, EXPIRED)


@dataclass(frozen=True)
class Recorded:
    """What a backup partition's materialisation recorded of its manifest."""

    partition: str
    manifest_key: str
    manifest_sha256: str


@dataclass(frozen=True)
class Finding:
    partition: str
    status: str
    detail: str = ""
    captured_at: str = ""
    commit: str = ""

    @property
    def problem(self) -> bool:
        return self.status not in NOT_PROBLEMS


@dataclass(frozen=True)
class TargetAudit:
    target: str
    prefix: str
    start: datetime.date
    end: datetime.date
    findings: tuple[Finding, ...]
    newest_captured_at: Optional[datetime.datetime]
    age_hours: Optional[float]
    fresh: bool
    objects_listed: int = 0
    manifests_read: int = 0

    @property
    def missing_days(self) -> tuple[str, ...]:
        return tuple(f.partition for f in self.findings if f.status in (MISSING, INCOMPLETE))

    @property
    def problems(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.problem)

    @property
    def ok(self) -> bool:
        return not self.problems and self.fresh

    def counts(self) -> dict[str, int]:
        return dict(Counter(f.status for f in self.findings))


def days(start: datetime.date, end: datetime.date) -> list[datetime.date]:
    return [start + datetime.timedelta(days=i) for i in range((end - start).days + 1)]


def verdict(day: str, read: ManifestRead, listed: Mapping[str, StoredObject], rec: Optional[Recorded],
            recorded_given: bool, store: BackupStore) -> Finding:
    """One complete-looking day: its manifest as recorded, and every object it names listed as uploaded. A store
    whose listing carries no ETags (s3s-fs) is asked for the ETag of each such object (a HEAD), so that a rewrite of
    the same size is still seen."""
    if read.manifest is None:
        return Finding(day, UNTRUSTED if read.untrusted else MANIFEST, read.error)
    m = read.manifest
    lineage = {"captured_at": m.captured_at, "commit": m.commit}
    if rec is not None and rec.manifest_sha256 and rec.manifest_sha256 != read.sha256:
        return Finding(day, MANIFEST, f"{rec.manifest_key} hashes to {read.sha256}, {rec.manifest_sha256} recorded "
                                      f"(rewritten after the backup)", **lineage)
    problems: list[tuple[str, str]] = []
    for e in m.objects:
        obj = listed.get(e.object_key)
        if obj is None:
            problems.append((GONE, f"{e.object_key} is not in the store"))
        elif obj.size != e.bytes:
            problems.append((SIZE, f"{e.object_key}: {obj.size} bytes stored, {e.bytes} in the manifest"))
        elif e.etag and (etag := obj.etag or _head_etag(store, e.object_key)) and etag != e.etag:
            problems.append((ETAG, f"{e.object_key}: ETag {etag} stored, {e.etag} in the manifest "
                                   f"(rewritten after the backup)"))
    if problems:
        detail = "; ".join(p[1] for p in problems[:5])
        if len(m.objects) > 1:
            detail = f"{len(problems)} of {len(m.objects)} objects differ from the manifest: {detail}"
        return Finding(day, problems[0][0], detail, **lineage)
    if m.captured_late:
        return Finding(day, LATE, f"captured on {m.captured_on}, after the day was over", **lineage)
    if recorded_given and rec is None:
        return Finding(day, UNRECORDED, "a backup is in the store but no materialisation records it", **lineage)
    return Finding(day, OK, f"{len(m.objects)} objects, {m.bytes} bytes", **lineage)


def _head_etag(store: BackupStore, key: str) -> str:
    head = store.head(key)
    return head.etag if head is not None else ""


def audit_target(store: BackupStore, target: str, prefix: str, start: datetime.date, end: datetime.date,
                 now: datetime.datetime, freshness_hours: float, recorded: Optional[Mapping[str, Recorded]] = None,
                 retained_since: Optional[datetime.date] = None, verify: bool = True) -> TargetAudit:
    """Per day in [start, end]: the day's manifest present (one listing of the prefix), read (one GET), as the
    materialisation recorded it (when `recorded` is given), and every object it names listed with its size and
    ETag. Days with nothing are MISSING, unless older than `retained_since` (EXPIRED). Freshness: the newest
    manifest's captured_at is younger than `freshness_hours`. Without `verify`, only the newest manifest is read
    (presence and freshness: the listing and one GET)."""
    listed: dict[str, StoredObject] = {}
    manifest_days: dict[datetime.date, str] = {}
    object_days: set[datetime.date] = set()
    count = 0
    for obj in store.list(prefix):
        count += 1
        listed[obj.key] = obj
        day = key_date(obj.key, prefix)
        if day is None:
            continue
        if obj.key == manifest_key(prefix, day.isoformat()):
            manifest_days[day] = obj.key
        else:
            object_days.add(day)
    wanted = [d for d in days(start, end) if d in manifest_days] if verify else []
    newest_day = max(manifest_days) if manifest_days else None
    to_read = {manifest_days[d] for d in wanted} | ({manifest_days[newest_day]} if newest_day else set())
    reads = read_manifests(store, sorted(to_read))
    findings = []
    for day in days(start, end):
        pk = day.isoformat()
        if day in manifest_days and not verify:
            findings.append(Finding(pk, OK, "manifest present"))
        elif day in manifest_days:
            rec = recorded.get(pk) if recorded is not None else None
            findings.append(verdict(pk, reads[manifest_days[day]], listed, rec, recorded is not None, store))
        elif day in object_days:
            findings.append(Finding(pk, INCOMPLETE, f"objects under {prefix}{pk}/ but no {MANIFEST_NAME}: a backup "
                                                    f"that never finished"))
        elif retained_since and day < retained_since:
            findings.append(Finding(pk, EXPIRED))
        else:
            findings.append(Finding(pk, MISSING, f"no backup under {prefix}{pk}/"))
    newest = reads[manifest_days[newest_day]].manifest if newest_day else None
    captured = newest.captured if newest else None
    age = (now - captured).total_seconds() / 3600 if captured else None
    return TargetAudit(target, prefix, start, end, tuple(findings), captured,
                       None if age is None else round(age, 2), age is not None and age < freshness_hours, count,
                       len(reads))


@dataclass(frozen=True)
class AuditTarget:
    name: str
    prefix: str
    retention_days: Optional[int] = None


@dataclass(frozen=True)
class StoreAudit:
    targets: tuple[TargetAudit, ...]
    requests: Mapping[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(t.ok for t in self.targets)


def audit_store(store: BackupStore, targets: Sequence[AuditTarget], start: datetime.date, end: datetime.date,
                recorded: Mapping[str, Mapping[str, Recorded]], now: datetime.datetime,
                freshness_hours: float) -> StoreAudit:
    """The window audit over every target. `requests` counts the API calls it made, by operation."""
    before = Counter(store.request_counts())
    out = []
    for t in targets:
        retained_since = (now.date() - datetime.timedelta(days=t.retention_days)) if t.retention_days else None
        out.append(audit_target(store, t.name, t.prefix, start, end, now, freshness_hours, recorded.get(t.name, {}),
                                retained_since))
    after = Counter(store.request_counts())
    return StoreAudit(tuple(out), dict(after - before))


def check_partition(store: BackupStore, prefix: str, day: str, rec: Optional[Recorded],
                    deep: bool = False) -> Finding:
    """One partition: its manifest (as recorded, when `rec` is given) and every object it names listed with its
    size and ETag (a listing of the day; a HEAD per object stored outside it); with `deep`, every object's bytes
    hash to the manifest's sha256."""
    key = manifest_key(prefix, day)
    listed = {o.key: o for o in store.list(f"{prefix}{day}/")}
    if key not in listed:
        status = INCOMPLETE if listed else MISSING
        return Finding(day, status, f"no {key} in the store" + (f" ({len(listed)} objects without it)"
                                                                 if listed else ""))
    read = read_one(store, key, trusted_signers(store))
    if read.manifest is not None:
        # objects stored outside the day's folder (MinIO's, stored once by content): asked one by one
        for e in read.manifest.objects:
            if not e.object_key.startswith(f"{prefix}{day}/") and (head := store.head(e.object_key)) is not None:
                listed[e.object_key] = StoredObject(head.key, head.size, head.etag, head.last_modified)
    finding = verdict(day, read, listed, rec, False, store)
    if finding.problem or not deep:
        return finding
    for e in read.manifest.objects:
        digest, size = store.sha256_of(e.object_key, e.version_id)
        if digest != e.sha256 or size != e.bytes:
            return Finding(day, SHA256, f"{e.object_key}: the bytes hash to {digest} ({size} bytes), {e.sha256} in "
                                        f"the manifest", finding.captured_at, finding.commit)
    return finding
