"""Object Lock, against moto's implementation of it: in a bucket created with Object Lock every backup object and
manifest is written locked until its day + its target's retention; a delete of a locked version is refused and
nothing is lost; a delete without a version id only hides the object behind a delete marker, and the version under
it stays (restorable, and retention counts it as not yet expired); retention deletes exactly the versions whose
lock has run out, reports what the store refuses, and clears the delete markers of what it deleted."""

import datetime
import logging
import time

import dagster as dg
import pytest

from prodg_assets.backups.store.manifest import Manifest
from prodg_assets.backups.store.objects import ObjectLock
from prodg_assets.backups.store.retention import prune
from prodg_assets.contract import POSTGRES_BACKUP
from prodg_assets.settings import BackupTarget
from tests.backups.conftest import BUCKET, EXPECTED_ROWS, TODAY

pytestmark = pytest.mark.docker

LOCKED = f"{BUCKET}-locked"
DAY = (TODAY - datetime.timedelta(days=1)).isoformat()  # the nightly run's (backed up with capture-late: midnight)


class Collected(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def locked(bed):
    """A bucket created with Object Lock (hence versioned), emptied of what the module's tests wrote at the end by
    lifting governance retention (as only a key with s3:BypassGovernanceRetention may)."""
    client = bed.store().client
    client.create_bucket(Bucket=LOCKED, ObjectLockEnabledForBucket=True)
    try:
        yield bed.store(bucket=LOCKED)
    finally:
        for page in client.get_paginator("list_object_versions").paginate(Bucket=LOCKED):
            for v in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]:
                client.delete_object(Bucket=LOCKED, Key=v["Key"], VersionId=v["VersionId"],
                                     BypassGovernanceRetention=True)
        client.delete_bucket(Bucket=LOCKED)


def test_a_backup_into_a_locked_bucket_is_locked_until_its_day_plus_retention(bed, locked):
    with dg.instance_for_test() as instance:
        result = bed.materialize([POSTGRES_BACKUP], DAY, instance, backup_store=locked)
    assert result.success
    md = {k: v.value for k, v in result.get_asset_materialization_events()[0].materialization.metadata.items()}
    until = datetime.datetime.combine(datetime.date.fromisoformat(DAY) + datetime.timedelta(days=31),
                                      datetime.time(), datetime.timezone.utc)
    assert md["object_lock"] == f"GOVERNANCE until {until.isoformat()}"
    for key in (md["object_key"], md["manifest_key"]):  # the dump (a multipart upload) and the manifest (one PUT)
        head = locked.head(key)
        assert head.lock_mode == "GOVERNANCE" and head.retain_until == until, key
    manifest = Manifest.from_json(locked.read_bytes(md["manifest_key"]))
    assert manifest.object_lock == md["object_lock"]

    # a compromised host deletes the version: refused, and the dump is still there byte for byte
    client = bed.store().client
    (version,) = [v for v in locked.versions(md["object_key"])]
    assert "AccessDenied" in locked.delete_version(md["object_key"], version.version_id)
    # a batch delete with version ids is refused as well (moto enforces it too, since its issue 8017)
    batch = client.delete_objects(Bucket=LOCKED, Delete={"Objects": [{"Key": md["object_key"],
                                                                      "VersionId": version.version_id}]})
    assert [e["Code"] for e in batch.get("Errors", [])] == ["AccessDenied"]
    assert locked.sha256_of(md["object_key"]) == (md["sha256"], md["bytes"])

    # a delete without a version id only hides it behind a delete marker: the version stays, restorable
    client.delete_object(Bucket=LOCKED, Key=md["object_key"])
    assert md["object_key"] not in [o.key for o in locked.list(f"postgres/{DAY}/")]
    kinds = sorted((v.delete_marker, v.size) for v in locked.versions(md["object_key"]))
    assert kinds == [(False, md["bytes"]), (True, 0)]
    marker = next(v for v in locked.versions(md["object_key"]) if v.delete_marker)
    assert locked.delete_version(md["object_key"], marker.version_id) is None  # markers are not locked
    assert locked.sha256_of(md["object_key"]) == (md["sha256"], md["bytes"])  # back, intact
    with dg.instance_for_test() as instance:
        drill = bed.materialize(["postgres_restore_drill"], DAY, instance, backup_store=locked)
        assert drill.success
        drill_md = drill.get_asset_materialization_events()[0].materialization.metadata
        assert drill_md["rows"].value == sum(EXPECTED_ROWS.values())


def test_retention_deletes_versions_whose_lock_ran_out_and_reports_the_refused(bed, locked):
    target = BackupTarget("t", "pg_dumpall", "ret/", 30)
    now = datetime.datetime.now(datetime.timezone.utc)
    old, recent = (TODAY - datetime.timedelta(days=40)).isoformat(), DAY
    late = (TODAY - datetime.timedelta(days=41)).isoformat()
    soon = ObjectLock("GOVERNANCE", now + datetime.timedelta(seconds=1))
    week = ObjectLock("GOVERNANCE", now + datetime.timedelta(days=7))
    for key in (f"ret/{old}/dump.age", f"ret/{old}/manifest.json"):
        locked.put_bytes(key, b"old day", lock=soon)  # its lock runs out in a second
    locked.put_bytes(f"ret/{late}/dump.age", b"captured late", lock=week)  # an old day, locked for a week still
    locked.put_bytes(f"ret/{late}/manifest.json", b"{}", lock=week)
    for key in (f"ret/{recent}/dump.age", f"ret/{recent}/manifest.json"):
        locked.put_bytes(key, b"recent", lock=week)
    bed.store().client.delete_object(Bucket=LOCKED, Key=f"ret/{recent}/dump.age")  # hidden by a marker, not gone
    time.sleep(max(0.0, (now + datetime.timedelta(seconds=2) - datetime.datetime.now(datetime.timezone.utc))
                   .total_seconds()))  # until the old day's lock has run out
    handler = Collected()
    log = logging.getLogger(f"retention-{LOCKED}")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    deleted = prune(locked, target, TODAY, set(), log)
    remaining = sorted((v.key, v.delete_marker) for v in locked.versions("ret/"))
    assert remaining == [(f"ret/{late}/dump.age", False), (f"ret/{late}/manifest.json", False),
                         (f"ret/{recent}/dump.age", False), (f"ret/{recent}/dump.age", True),
                         (f"ret/{recent}/manifest.json", False)]
    assert deleted == 2  # the old day's two versions; the late day's are refused and kept
    refused = [line for line in handler.lines if "refused" in line]
    assert len(refused) == 1 and f"ret/{late}/dump.age" in refused[0] and "AccessDenied" in refused[0]


def test_a_minio_object_a_later_day_names_is_locked_as_long_as_that_day(bed, locked):
    """MinIO's objects are stored once by content: the day that names an unchanged object again moves its lock to
    its own date, so the object outlives every day that needs it."""
    first = (TODAY - datetime.timedelta(days=3)).isoformat()
    with dg.instance_for_test() as instance:
        assert bed.materialize(["minio_backup"], first, instance, backup_store=locked).success
        stored = Manifest.from_json(locked.read_bytes(f"minio/{first}/manifest.json")).objects
        assert bed.materialize(["minio_backup"], DAY, instance, backup_store=locked).success
    later = Manifest.from_json(locked.read_bytes(f"minio/{DAY}/manifest.json"))
    assert {e.object_key for e in later.objects} == {e.object_key for e in stored}  # nothing uploaded again
    until = datetime.datetime.combine(datetime.date.fromisoformat(DAY) + datetime.timedelta(days=31),
                                      datetime.time(), datetime.timezone.utc)
    for entry in later.objects:
        head = locked.head(entry.object_key)
        assert head.lock_mode == "GOVERNANCE" and head.retain_until == until, entry.object_key
