"""Audits of the backup store against what the materialisations recorded.

Choice of evidence, so that a year of partitions costs only listings:
- The **window audit** reads nothing but ListObjectsV2 pages (1000 keys per request). A listing gives each object's
  key, size, ETag and upload time, and the materialisation recorded the key, size, ETag and sha256 at upload. Size
  and ETag from the listing prove the object is the one that was uploaded: any rewrite — a corrupted copy put back,
  a different dump under the same name — changes the ETag (an MD5 for single-part objects, the MD5 of the part
  MD5s for multipart ones), and a deletion removes the key. The sha256 is not in a listing (it sits in the object
  metadata, x-amz-meta-sha256, which only HEAD returns), so the window audit does not read it: 365 days × 3 targets
  would otherwise cost ~1100 HEAD requests instead of ~3 listings.
- The **partition check** (one partition) adds a HEAD to compare the stored sha256 metadata, and for the MinIO
  mirror downloads the small manifest and verifies its sha256 — the partition's checksum — and every object it
  names. `deep=True` also re-hashes the data by downloading it; the restore drill does that for Postgres daily.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Optional, Sequence

from .retention import key_date
from .store import BackupStore, StoredObject

OK = "ok"
MISSING = "missing"  # no backup at all for the day
GONE = "gone"  # the recorded object is not in the store
SIZE = "size_mismatch"
ETAG = "etag_mismatch"  # the object was rewritten after the backup
SHA256 = "sha256_mismatch"
OBJECTS = "objects_mismatch"  # a mirror partition's objects differ from its manifest
UNRECORDED = "unrecorded"  # present in the store, but no materialisation recorded it (reported, not a failure)
EXPIRED = "expired"  # older than the retention window and gone, as it should be
NOT_PROBLEMS = (OK, UNRECORDED, EXPIRED)


@dataclass(frozen=True)
class Recorded:
    """What a backup partition's materialisation recorded."""

    partition: str
    object_key: str
    bytes: int
    sha256: str = ""
    etag: str = ""
    object_count: Optional[int] = None  # mirror partitions: the objects besides the manifest


@dataclass(frozen=True)
class Finding:
    partition: str
    status: str
    detail: str = ""

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
    newest_at: Optional[datetime.datetime]
    age_hours: Optional[float]
    fresh: bool
    objects_listed: int = 0

    @property
    def missing_days(self) -> tuple[str, ...]:
        return tuple(f.partition for f in self.findings if f.status == MISSING)

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


def audit_listing(target: str, prefix: str, listing: Iterable[StoredObject], start: datetime.date,
                  end: datetime.date, recorded: Mapping[str, Recorded], now: datetime.datetime,
                  freshness_hours: float, complete_marker: Optional[str] = None,
                  retained_since: Optional[datetime.date] = None) -> TargetAudit:
    """Per day in [start, end]: is the recorded object listed with the recorded size and ETag (and, for a mirror,
    the recorded number of objects)? Days with no backup at all are MISSING, unless they are older than
    `retained_since` (EXPIRED). Freshness: the newest complete backup in the prefix is younger than
    `freshness_hours`. The listing is consumed once; only what the verdicts need is kept."""
    wanted = {r.object_key: r for r in recorded.values()}
    seen: dict[str, StoredObject] = {}
    complete_days: set[datetime.date] = set()
    object_counts: Counter = Counter()
    newest: Optional[datetime.datetime] = None
    listed = 0
    for obj in listing:
        listed += 1
        day = key_date(obj.key, prefix)
        if obj.key in wanted:
            seen[obj.key] = obj
        if day is None:
            continue
        is_marker = complete_marker is not None and obj.key.endswith("/" + complete_marker)
        if complete_marker is None or is_marker:
            complete_days.add(day)
            newest = obj.last_modified if newest is None or obj.last_modified > newest else newest
        if complete_marker is not None and not is_marker:
            object_counts[day] += 1
    findings = []
    for day in days(start, end):
        pk = day.isoformat()
        rec = recorded.get(pk)
        if rec is None:
            if day in complete_days:
                findings.append(Finding(pk, UNRECORDED, "a backup is in the store but no materialisation records it"))
            elif retained_since and day < retained_since:
                findings.append(Finding(pk, EXPIRED))
            else:
                findings.append(Finding(pk, MISSING, f"no backup under {prefix}{pk}/"))
            continue
        obj = seen.get(rec.object_key)
        if obj is None:
            if retained_since and day < retained_since and day not in complete_days:
                findings.append(Finding(pk, EXPIRED))
            else:
                findings.append(Finding(pk, GONE, f"{rec.object_key} is not in the store"))
        elif obj.size != rec.bytes:
            findings.append(Finding(pk, SIZE, f"{rec.object_key}: {obj.size} bytes stored, {rec.bytes} recorded"))
        elif rec.etag and obj.etag != rec.etag:
            findings.append(Finding(pk, ETAG, f"{rec.object_key}: ETag {obj.etag} stored, {rec.etag} recorded "
                                              f"(rewritten after the backup)"))
        elif rec.object_count is not None and object_counts[day] != rec.object_count:
            findings.append(Finding(pk, OBJECTS, f"{object_counts[day]} objects under {prefix}{pk}/, "
                                                 f"{rec.object_count} recorded"))
        else:
            findings.append(Finding(pk, OK))
    age = (now - newest).total_seconds() / 3600 if newest else None
    return TargetAudit(target, prefix, start, end, tuple(findings), newest, None if age is None else round(age, 2),
                       age is not None and age < freshness_hours, listed)


@dataclass(frozen=True)
class AuditTarget:
    name: str
    prefix: str
    complete_marker: Optional[str] = None
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
    """The window audit over every target: one listing of each prefix, nothing else. `requests` counts the API
    calls it made, by operation."""
    before = Counter(store.request_counts())
    out = []
    for t in targets:
        retained_since = (now.date() - datetime.timedelta(days=t.retention_days)) if t.retention_days else None
        out.append(audit_listing(t.name, t.prefix, store.list(t.prefix), start, end, recorded.get(t.name, {}), now,
                                 freshness_hours, t.complete_marker, retained_since))
    after = Counter(store.request_counts())
    return StoreAudit(tuple(out), dict(after - before))


def check_object(store: BackupStore, rec: Recorded, deep: bool = False) -> Finding:
    """One partition's object: it exists (HEAD) with the recorded size, ETag and sha256 metadata; with `deep`,
    its bytes hash to the recorded sha256 (download)."""
    head = store.head(rec.object_key)
    pk = rec.partition
    if head is None:
        return Finding(pk, GONE, f"{rec.object_key} is not in the store")
    if head.size != rec.bytes:
        return Finding(pk, SIZE, f"{rec.object_key}: {head.size} bytes stored, {rec.bytes} recorded")
    if rec.etag and head.etag != rec.etag:
        return Finding(pk, ETAG, f"{rec.object_key}: ETag {head.etag} stored, {rec.etag} recorded")
    if rec.sha256 and head.sha256 != rec.sha256:
        return Finding(pk, SHA256, f"{rec.object_key}: sha256 metadata {head.sha256 or '(none)'}, "
                                   f"{rec.sha256} recorded")
    if deep:
        digest, size = store.sha256_of(rec.object_key)
        if digest != rec.sha256 or size != rec.bytes:
            return Finding(pk, SHA256, f"{rec.object_key}: the bytes hash to {digest} ({size} bytes), "
                                       f"{rec.sha256} recorded")
    return Finding(pk, OK, f"{rec.object_key}: {head.size} bytes, sha256 {head.sha256[:16]}…")


def check_mirror(store: BackupStore, rec: Recorded, deep: bool = False) -> Finding:
    """One mirror partition: the manifest as recorded (size, ETag, sha256 — verified by downloading it, it is
    small), and every object it names listed under the partition with its size and ETag; with `deep`, every
    object's bytes hash to the manifest's sha256."""
    pk = rec.partition
    finding = check_object(store, rec)
    if finding.status != OK:
        return finding
    raw = store.read_bytes(rec.object_key)
    digest = hashlib.sha256(raw).hexdigest()
    if digest != rec.sha256:
        return Finding(pk, SHA256, f"{rec.object_key}: the manifest hashes to {digest}, {rec.sha256} recorded")
    manifest = json.loads(raw)
    base = rec.object_key.rsplit("/", 1)[0] + "/"
    listed = {o.key: o for o in store.list(base)}
    problems = []
    for entry in manifest.get("objects") or []:
        obj = listed.get(entry["object_key"])
        if obj is None:
            problems.append(f"{entry['object_key']} is missing")
        elif obj.size != entry["size"] or (entry.get("etag") and obj.etag != entry["etag"]):
            problems.append(f"{entry['object_key']}: {obj.size} bytes / ETag {obj.etag} stored, {entry['size']} "
                            f"bytes / ETag {entry.get('etag')} in the manifest")
        elif deep:
            got, _ = store.sha256_of(entry["object_key"])
            if got != entry["sha256"]:
                problems.append(f"{entry['object_key']}: hashes to {got}, {entry['sha256']} in the manifest")
    if problems:
        return Finding(pk, OBJECTS, f"{len(problems)} of {len(manifest.get('objects') or [])} objects differ "
                                    f"from the manifest: " + "; ".join(problems[:5]))
    return Finding(pk, OK, f"manifest and {len(manifest.get('objects') or [])} objects as recorded")
