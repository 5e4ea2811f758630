"""The window audit: a year of daily partitions of three targets, each with its manifest, audited against the
store's listing and what was recorded — one listing per prefix and at most one GET per partition (the requests are
counted) — and the per-partition check."""

import datetime
import math
from concurrent.futures import ThreadPoolExecutor

import pytest

from prodg_assets.backups.proofs.audit import (
    ETAG,
    EXPIRED,
    GONE,
    INCOMPLETE,
    LATE,
    MANIFEST,
    MISSING,
    OK,
    SHA256,
    SIZE,
    UNRECORDED,
    AuditTarget,
    Recorded,
    audit_store,
    audit_target,
    check_partition,
)
from prodg_assets.backups.store.manifest import Entry, Manifest, write_manifest
from tests.backups.conftest import BUCKET, expected_requests

NOW = datetime.datetime.now(datetime.timezone.utc)
END = NOW.date() - datetime.timedelta(days=1)
START = END - datetime.timedelta(days=364)
YEAR = [START + datetime.timedelta(days=i) for i in range(365)]
TARGETS = [AuditTarget("postgres", "postgres/"), AuditTarget("minio", "minio/"), AuditTarget("configs", "configs/")]


def manifest(target: str, day: str, entries, captured: datetime.datetime | None = None,
             late: bool = False) -> Manifest:
    at = captured or datetime.datetime.combine(datetime.date.fromisoformat(day) + datetime.timedelta(days=1),
                                               datetime.time(3), datetime.timezone.utc)
    return Manifest(target, day, at.isoformat(timespec="seconds"), "c0ffee" * 6 + "abcd", "deployed", "test",
                    "sha256:img", "", "zstd", ("sha256:0123456789abcdef",), tuple(entries), late)


def backup(store, target: str, prefix: str, day: str, bodies: dict[str, bytes], **kw) -> Recorded:
    entries = []
    for name, body in bodies.items():
        up = store.put_bytes(f"{prefix}{day}/{name}", body)
        entries.append(Entry(up.key, len(body), up.bytes, up.sha256, up.etag))
    up = write_manifest(store, prefix, manifest(target, day, entries, **kw))
    return Recorded(day, up.key, up.sha256)


def upload_year(store) -> dict[str, dict[str, Recorded]]:
    """365 days × 3 targets, as the backups would have left them; returns what they recorded."""
    def one(day: datetime.date):
        d = day.isoformat()
        return d, {"postgres": backup(store, "postgres", "postgres/", d, {"pg_dumpall-030000.sql.zst.age":
                                                                             f"dump of {d}".encode()}),
                   "configs": backup(store, "configs", "configs/", d, {"config-abc.tar.zst.age":
                                                                          f"config of {d}".encode()}),
                   "minio": backup(store, "minio", "minio/", d, {"media/a.bin.age": f"a on {d}".encode(),
                                                                 "media/b.bin.age": f"b on {d}".encode()})}

    recorded: dict[str, dict[str, Recorded]] = {t.name: {} for t in TARGETS}
    with ThreadPoolExecutor(8) as pool:
        for d, recs in pool.map(one, YEAR):
            for target, rec in recs.items():
                recorded[target][d] = rec
    return recorded


def day(n: int) -> str:
    return YEAR[n].isoformat()


@pytest.fixture(scope="module")
def year(bed):
    store = bed.store()
    store.delete_objects([o.key for o in store.list()])
    recorded = upload_year(store)
    # damage, by hand
    client = bed.store().client
    client.delete_object(Bucket=BUCKET, Key=f"postgres/{day(100)}/pg_dumpall-030000.sql.zst.age")  # deleted
    client.put_object(Bucket=BUCKET, Key=f"configs/{day(200)}/config-abc.tar.zst.age", Body=b"tampered")  # rewritten
    size = len(f"config of {day(201)}")
    client.put_object(Bucket=BUCKET, Key=f"configs/{day(201)}/config-abc.tar.zst.age", Body=b"X" * size)  # same size
    client.delete_object(Bucket=BUCKET, Key=f"minio/{day(300)}/media/b.bin.age")  # one mirrored object gone
    for target in ("postgres", "configs"):  # a day that was never backed up at all
        recorded[target].pop(day(50))
        for o in store.list(f"{target}/{day(50)}/"):
            client.delete_object(Bucket=BUCKET, Key=o.key)
    client.delete_object(Bucket=BUCKET, Key=f"postgres/{day(60)}/manifest.json")  # a backup that never finished
    # a manifest rewritten afterwards (signed by the host: an unsigned one is test_signed_manifests' case)
    write_manifest(store, "minio/", manifest("minio", day(70), []))
    # a day backfilled late, on purpose: complete, reported as late, not a problem
    recorded["configs"][day(80)] = backup(store, "configs", "configs/", day(80), {"config-late.tar.zst.age": b"x"},
                                          captured=NOW - datetime.timedelta(hours=2), late=True)
    return recorded


def test_a_year_of_three_targets_is_audited_from_manifests(bed, year):
    store = bed.store()
    result = audit_store(store, TARGETS, START, END, year, NOW, 26)
    by = {t.target: t for t in result.targets}
    problems = {(t.target, f.partition): f.status for t in result.targets for f in t.problems}
    assert problems == {("postgres", day(100)): GONE, ("configs", day(200)): SIZE, ("configs", day(201)): ETAG,
                        ("minio", day(300)): GONE, ("postgres", day(50)): MISSING, ("configs", day(50)): MISSING,
                        ("postgres", day(60)): INCOMPLETE, ("minio", day(70)): MANIFEST}
    assert by["postgres"].missing_days == (day(50), day(60)) and by["configs"].missing_days == (day(50),)
    assert [f.partition for f in by["configs"].findings if f.status == LATE] == [day(80)]
    assert all(t.fresh for t in result.targets)
    assert sum(len(t.findings) for t in result.targets) == 3 * 365
    # one ListObjectsV2 per page of each prefix, one GetObject per manifest, nothing else — but a HEAD per object
    # a manifest names where the listing carries no ETag (s3s-fs), so that a rewrite of the same size is still seen
    keys = {"postgres": 2 * 365 - 4, "configs": 2 * 365 - 2 + 1, "minio": 3 * 365 - 1}  # keys left per prefix
    manifests = {"postgres": 363, "configs": 364, "minio": 365}
    # (the objects whose size agrees with their manifest's, in the manifests read as recorded: the ETag comes next)
    listed = {o.key: o.size for o in store.list()}
    named = sum(listed.get(e.object_key) == e.bytes for key in listed if key.endswith("/manifest.json")
                and key != f"minio/{day(70)}/manifest.json"
                for e in Manifest.from_json(store.read_bytes(key)).objects)
    assert result.requests == expected_requests(store, sum(math.ceil(n / 1000) for n in keys.values()),
                                                sum(manifests.values()), named)
    assert result.requests["GetObject"] <= 3 * 365


def test_the_partition_check(bed, year):
    store = bed.store()
    assert check_partition(store, "postgres/", day(10), year["postgres"][day(10)], deep=True).status == OK
    assert check_partition(store, "postgres/", day(100), year["postgres"][day(100)]).status == GONE
    assert check_partition(store, "configs/", day(201), year["configs"][day(201)]).status == ETAG
    assert check_partition(store, "postgres/", day(60), None).status == INCOMPLETE
    assert check_partition(store, "postgres/", day(50), None).status == MISSING
    forged = year["postgres"][day(11)]
    assert check_partition(store, "postgres/", day(11), Recorded(day(11), forged.manifest_key, "0" * 64)).status \
        == MANIFEST
    finding = check_partition(store, "minio/", day(300), year["minio"][day(300)])
    assert finding.status == GONE and "media/b.bin.age is not in the store" in finding.detail
    assert check_partition(store, "minio/", day(10), year["minio"][day(10)], deep=True).status == OK
    before = store.request_counts()
    check_partition(store, "postgres/", day(13), year["postgres"][day(13)])
    assert {k: v - before.get(k, 0) for k, v in store.request_counts().items() if v != before.get(k, 0)} == \
        expected_requests(store, 1, 1, 1)


def test_a_deep_check_catches_bytes_that_differ_from_the_manifest(bed, clean_store):
    store = clean_store
    rec = backup(store, "postgres", "postgres/", "2026-01-05", {"d.age": b"the real dump"})
    raw = store.read_bytes(rec.manifest_key)
    m = Manifest.from_json(raw)
    wrong = Manifest(**{**m.__dict__, "objects": (Entry(**{**m.objects[0].__dict__, "sha256": "f" * 64}),)})
    up = write_manifest(store, "postgres/", wrong)  # signed: the host itself recorded a wrong sha256
    assert check_partition(store, "postgres/", "2026-01-05", Recorded("2026-01-05", up.key, up.sha256)).status == OK
    assert check_partition(store, "postgres/", "2026-01-05", Recorded("2026-01-05", up.key, up.sha256),
                           deep=True).status == SHA256


def test_freshness_is_the_newest_manifests_capture_time_not_the_stores_upload_time(bed, clean_store):
    store = clean_store
    old = NOW - datetime.timedelta(hours=30)
    backup(store, "m", "m/", "2026-01-01", {"x": b"x"}, captured=old)
    store.put_bytes("m/2026-01-01/x", b"rewritten just now")  # LastModified moves; what was captured does not
    audit = audit_target(store, "m", "m/", datetime.date(2026, 1, 1), datetime.date(2026, 1, 2), NOW, 26)
    assert not audit.fresh and audit.age_hours == pytest.approx(30, abs=0.01)
    assert [f.status for f in audit.findings] == [SIZE, MISSING]
    backup(store, "m", "m/", "2026-01-02", {"y": b"y"}, captured=NOW - datetime.timedelta(hours=1))
    assert audit_target(store, "m", "m/", datetime.date(2026, 1, 1), datetime.date(2026, 1, 2), NOW, 26).fresh


def test_unrecorded_and_expired_days(bed, clean_store):
    store = clean_store
    backup(store, "p", "p/", "2026-01-03", {"x": b"x"})
    audit = audit_target(store, "p", "p/", datetime.date(2026, 1, 1), datetime.date(2026, 1, 3), NOW, 10 ** 6,
                         recorded={}, retained_since=datetime.date(2026, 1, 2))
    assert [f.status for f in audit.findings] == [EXPIRED, MISSING, UNRECORDED]
