"""The window audit: a year of daily partitions of three targets, audited against what was recorded with listings
only (the requests are counted), and the per-partition checks that add HEAD and manifest verification."""

import datetime
import json
import math
from concurrent.futures import ThreadPoolExecutor

import pytest

from prodg_assets.backups.audit import (
    EXPIRED,
    GONE,
    MISSING,
    OBJECTS,
    OK,
    SHA256,
    SIZE,
    UNRECORDED,
    AuditTarget,
    Recorded,
    audit_listing,
    audit_store,
    check_mirror,
    check_object,
)
from prodg_assets.backups.store import StoredObject
from tests.backups.conftest import BUCKET, s3

NOW = datetime.datetime.now(datetime.timezone.utc)
END = NOW.date() - datetime.timedelta(days=1)
START = END - datetime.timedelta(days=364)
YEAR = [START + datetime.timedelta(days=i) for i in range(365)]
TARGETS = [AuditTarget("postgres", "postgres/"), AuditTarget("minio", "minio/", "manifest.json"),
           AuditTarget("configs", "configs/")]


def upload_year(store) -> dict[str, dict[str, Recorded]]:
    """365 days × 3 targets, as the backups would have left them; returns what they recorded."""
    def one(day: datetime.date):
        d = day.isoformat()
        pg = store.put_bytes(f"postgres/{d}/pg_dumpall-030000.sql.zst", f"dump of {d}".encode())
        cfg = store.put_bytes(f"configs/{d}/config-abc.tar.zst", f"config of {d}".encode())
        entries = []
        for name in ("a.bin", "b.bin"):
            up = store.put_bytes(f"minio/{d}/media/{name}", f"{name} on {d}".encode())
            entries.append({"object_key": up.key, "size": up.bytes, "etag": up.etag, "sha256": up.sha256})
        manifest = store.put_bytes(f"minio/{d}/manifest.json", json.dumps({"objects": entries}).encode())
        return d, {"postgres": Recorded(d, pg.key, pg.bytes, pg.sha256, pg.etag),
                   "configs": Recorded(d, cfg.key, cfg.bytes, cfg.sha256, cfg.etag),
                   "minio": Recorded(d, manifest.key, manifest.bytes, manifest.sha256, manifest.etag, 2)}

    recorded: dict[str, dict[str, Recorded]] = {t.name: {} for t in TARGETS}
    with ThreadPoolExecutor(8) as pool:
        for d, recs in pool.map(one, YEAR):
            for target, rec in recs.items():
                recorded[target][d] = rec
    return recorded


@pytest.fixture(scope="module")
def year(bed):
    store = bed.store()
    store.delete_objects([o.key for o in store.list()])
    recorded = upload_year(store)
    # damage, by hand
    client = s3(bed.store_url)
    day = lambda n: YEAR[n].isoformat()  # noqa: E731
    client.delete_object(Bucket=BUCKET, Key=recorded["postgres"][day(100)].object_key)  # deleted
    client.put_object(Bucket=BUCKET, Key=recorded["configs"][day(200)].object_key, Body=b"tampered")  # rewritten
    client.put_object(Bucket=BUCKET, Key=recorded["configs"][day(201)].object_key,  # same size, other bytes
                      Body=b"X" * recorded["configs"][day(201)].bytes)
    client.delete_object(Bucket=BUCKET, Key=f"minio/{day(300)}/media/b.bin")  # one mirrored object gone
    for target in ("postgres", "configs"):  # a day that was never backed up at all
        client.delete_object(Bucket=BUCKET, Key=recorded[target].pop(day(50)).object_key)
    return recorded


def test_a_year_of_three_targets_is_audited_with_listings_only(bed, year):
    store = bed.store()
    result = audit_store(store, TARGETS, START, END, year, NOW, 26)
    by = {t.target: t for t in result.targets}
    problems = {(t.target, f.partition): f.status for t in result.targets for f in t.problems}
    d = lambda n: YEAR[n].isoformat()  # noqa: E731
    assert problems == {("postgres", d(100)): GONE, ("configs", d(200)): SIZE, ("configs", d(201)): "etag_mismatch",
                        ("minio", d(300)): OBJECTS, ("postgres", d(50)): MISSING, ("configs", d(50)): MISSING}
    assert by["postgres"].missing_days == (d(50),) and by["configs"].missing_days == (d(50),)
    assert by["minio"].missing_days == ()
    assert all(t.fresh for t in result.targets)
    assert sum(len(t.findings) for t in result.targets) == 3 * 365
    # the only requests: one ListObjectsV2 per page of each prefix
    pages = {"postgres": 363, "configs": 364, "minio": 365 * 3 - 1}  # keys left under each prefix
    assert result.requests == {"ListObjectsV2": sum(math.ceil(n / 1000) for n in pages.values())} == \
        {"ListObjectsV2": 4}
    small_pages = bed.store(list_page_size=100)
    assert audit_store(small_pages, TARGETS, START, END, year, NOW, 26).requests == \
        {"ListObjectsV2": sum(math.ceil(n / 100) for n in pages.values())}


def test_partition_checks_add_head_and_manifest_verification(bed, year):
    store = bed.store()
    d = lambda n: YEAR[n].isoformat()  # noqa: E731
    assert check_object(store, year["postgres"][d(10)], deep=True).status == OK
    assert check_object(store, year["postgres"][d(100)]).status == GONE
    assert check_object(store, year["configs"][d(201)]).status == "etag_mismatch"
    forged = year["postgres"][d(11)]
    assert check_object(store, Recorded(forged.partition, forged.object_key, forged.bytes, "0" * 64)).status == SHA256
    assert check_mirror(store, year["minio"][d(10)], deep=True).status == OK
    finding = check_mirror(store, year["minio"][d(300)])
    assert finding.status == OBJECTS and "media/b.bin is missing" in finding.detail
    before = store.request_counts()
    check_object(store, year["postgres"][d(12)])
    assert {k: v - before.get(k, 0) for k, v in store.request_counts().items() if v != before.get(k, 0)} == \
        {"HeadObject": 1}


def obj(key: str, size: int = 1, etag: str = "e", at: datetime.datetime = NOW) -> StoredObject:
    return StoredObject(key, size, etag, at)


LISTING_CASES = [
    # (name, listing, recorded, retained_since, expected statuses for days 1..3)
    ("all as recorded", [obj("p/2026-01-01/x"), obj("p/2026-01-02/x"), obj("p/2026-01-03/x")],
     {"2026-01-0%d" % i: Recorded("2026-01-0%d" % i, f"p/2026-01-0{i}/x", 1, "", "e") for i in (1, 2, 3)}, None,
     [OK, OK, OK]),
    ("present but unrecorded, and a gap", [obj("p/2026-01-01/x"), obj("p/2026-01-03/x")], {}, None,
     [UNRECORDED, MISSING, UNRECORDED]),
    ("older than the retention window and gone: expired, not missing", [obj("p/2026-01-03/x")],
     {"2026-01-01": Recorded("2026-01-01", "p/2026-01-01/x", 1)}, datetime.date(2026, 1, 3),
     [EXPIRED, EXPIRED, UNRECORDED]),
    ("size differs", [obj("p/2026-01-01/x", size=2)], {"2026-01-01": Recorded("2026-01-01", "p/2026-01-01/x", 1)},
     datetime.date(2026, 1, 3), [SIZE, EXPIRED, MISSING]),
]


@pytest.mark.parametrize("name,listing,recorded,retained_since,expected", LISTING_CASES,
                         ids=[c[0] for c in LISTING_CASES])
def test_audit_listing(name, listing, recorded, retained_since, expected):
    audit = audit_listing("t", "p/", listing, datetime.date(2026, 1, 1), datetime.date(2026, 1, 3), recorded, NOW,
                          26, retained_since=retained_since)
    assert [f.status for f in audit.findings] == expected


def test_freshness_is_the_age_of_the_newest_complete_backup():
    old = NOW - datetime.timedelta(hours=30)
    audit = audit_listing("m", "m/", [obj("m/2026-01-01/manifest.json", at=old), obj("m/2026-01-02/b/k")],
                          datetime.date(2026, 1, 1), datetime.date(2026, 1, 2), {}, NOW, 26, "manifest.json")
    assert not audit.fresh and audit.age_hours == pytest.approx(30, abs=0.01)
    assert [f.status for f in audit.findings] == [UNRECORDED, MISSING]  # a day without its manifest is missing
    assert audit_listing("m", "m/", [obj("m/2026-01-01/manifest.json")], datetime.date(2026, 1, 1),
                         datetime.date(2026, 1, 1), {}, NOW, 26, "manifest.json").fresh
