"""The backup assets against real parts: three daily partitions of postgres_backup, minio_backup and config_backup
materialised into the off-site store (moto), verified by downloading, then the restore drill, and finally objects
deleted or corrupted by hand, which must fail exactly their own partition's check."""

import datetime
import hashlib
import io
import json
import tarfile

import dagster as dg
import pytest
import zstandard

from prodg_assets.backups.definitions import backup_definitions, build_backup_resources
from prodg_assets.contract import (
    AUDIT_CLEAN,
    BACKUP_AUDIT,
    BACKUP_JOB,
    BACKUP_SCHEDULE,
    CONFIG_BACKUP,
    FRESH,
    MINIO_BACKUP,
    NO_MISSING_DAYS,
    OBJECT_INTACT,
    POSTGRES_BACKUP,
    RESTORE_DRILL,
)
from tests.backups.conftest import (
    BUCKET,
    EXPECTED_ROWS,
    MINIO_OBJECTS,
    SECRETS,
    START,
    STORE_KEY_ID,
    STORE_SECRET,
    TODAY,
    s3,
)

pytestmark = pytest.mark.docker

DAYS = [(TODAY - datetime.timedelta(days=n)).isoformat() for n in (3, 2, 1)]
BACKUPS = [POSTGRES_BACKUP, MINIO_BACKUP, CONFIG_BACKUP]
PREFIX = {POSTGRES_BACKUP: "postgres/", MINIO_BACKUP: "minio/", CONFIG_BACKUP: "configs/"}


@pytest.fixture(scope="module")
def instance():
    with dg.instance_for_test() as inst:
        yield inst


@pytest.fixture(scope="module")
def three_days(bed, instance):
    """Each day's partition of the three backups (with their checks), as the nightly run would do it."""
    store = bed.store()
    store.delete_objects([o.key for o in store.list()])
    results = {day: bed.materialize(BACKUPS, day, instance) for day in DAYS}
    metadata = {}
    for day, result in results.items():
        for event in result.get_asset_materialization_events():
            mat = event.event_specific_data.materialization
            metadata[(mat.asset_key.to_user_string(), day)] = {k: v.value for k, v in mat.metadata.items()}
    return results, metadata


def test_three_partitions_give_three_objects_per_target_with_checksums_verified_by_download(bed, three_days):
    results, metadata = three_days
    assert all(r.success for r in results.values())
    store = bed.store()
    listed = [o.key for o in store.list()]
    for asset in (POSTGRES_BACKUP, CONFIG_BACKUP):
        keys = [k for k in listed if k.startswith(PREFIX[asset])]
        assert sorted(k.split("/")[1] for k in keys) == DAYS, keys  # one object per day
        for day in DAYS:
            md = metadata[(asset, day)]
            assert md["object_key"].startswith(f"{PREFIX[asset]}{day}/") and md["object_key"] in keys
            digest, size = store.sha256_of(md["object_key"])
            assert (digest, size) == (md["sha256"], md["bytes"])
            assert store.head(md["object_key"]).sha256 == md["sha256"]  # x-amz-meta-sha256
            assert md["commit"] == bed.commit
            assert 0 < md["bytes"] < md["raw_bytes"]
            assert isinstance(md["duration_s"], float) and isinstance(md["throughput_mb_s"], float)
    manifests = [k for k in listed if k.startswith("minio/") and k.endswith("/manifest.json")]
    assert sorted(k.split("/")[1] for k in manifests) == DAYS
    for day in DAYS:
        md = metadata[(MINIO_BACKUP, day)]
        assert md["object_key"] == f"minio/{day}/manifest.json"
        raw = store.read_bytes(md["object_key"])
        assert hashlib.sha256(raw).hexdigest() == md["sha256"]  # the manifest's sha256 is the partition checksum
        manifest = json.loads(raw)
        assert md["object_count"] == manifest["object_count"] == len(MINIO_OBJECTS)
        assert md["bytes"] == sum(len(v) for v in MINIO_OBJECTS.values())
        for entry in manifest["objects"]:
            data = MINIO_OBJECTS[(entry["bucket"], entry["key"])]
            assert entry["object_key"] == f"minio/{day}/{entry['bucket']}/{entry['key']}"
            assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["size"] == len(data)
            assert store.sha256_of(entry["object_key"]) == (entry["sha256"], entry["size"])


def test_metadata_names_commit_source_and_the_census(bed, three_days):
    _, metadata = three_days
    pg = metadata[(POSTGRES_BACKUP, DAYS[0])]
    image_id = bed.client.api.inspect_container(bed.pg)["Image"]
    assert pg["source"] == f"{bed.pg} @ {image_id}" and pg["source_image_id"] == image_id
    assert pg["object_key"].endswith(".sql.zst") and pg["compression"] == "zstd"
    assert pg["row_counts"]["rows"] == EXPECTED_ROWS
    assert pg["databases"] == "hermes, infisical, postgres"
    config = metadata[(CONFIG_BACKUP, DAYS[0])]
    assert config["object_key"] == f"configs/{DAYS[0]}/config-{bed.commit[:12]}.tar.zst"
    assert bed.commit in config["source"]


def test_config_backup_is_the_config_tree_at_the_commit(bed, three_days):
    _, metadata = three_days
    data = bed.store().read_bytes(metadata[(CONFIG_BACKUP, DAYS[1])]["object_key"])
    tar = tarfile.open(fileobj=io.BytesIO(zstandard.ZstdDecompressor().decompressobj().decompress(data)))
    names = set(tar.getnames())
    assert {"config/prodg.yaml", "config/compose/docker-compose.yml"} <= names
    assert b"pg_dumpall" in tar.extractfile("config/prodg.yaml").read()


def test_checks_pass_per_partition_and_name_the_missing_days_of_the_window(three_days):
    results, _ = three_days
    for day, result in results.items():
        verdicts = {(e.asset_key.to_user_string(), e.asset_check_key.name): e for e in
                    result.get_asset_check_evaluations()}
        for asset in BACKUPS:
            assert verdicts[(asset, OBJECT_INTACT)].passed, verdicts[(asset, OBJECT_INTACT)].metadata
            assert verdicts[(asset, FRESH)].passed
            gaps = verdicts[(asset, NO_MISSING_DAYS)]
            # start_date is 10 days ago; only the last three days are backed up, one per run
            expected = [(START + datetime.timedelta(days=i)).isoformat() for i in range(7)]
            expected += [d for d in DAYS if d > day]
            assert not gaps.passed
            assert gaps.metadata["missing_days"].value == ", ".join(expected)


def test_restore_drill_restores_the_dump_and_matches_the_census(bed, three_days, instance):
    result = bed.materialize([RESTORE_DRILL], DAYS[2], instance)
    assert result.success
    md = {k: v.value for k, v in result.get_asset_materialization_events()[0].materialization.metadata.items()}
    assert md["rows"] == sum(EXPECTED_ROWS.values()) and md["tables"] == len(EXPECTED_ROWS)
    assert md["databases"] == "hermes, infisical, postgres"
    assert md["findings"] == "none"
    assert not bed.client.containers.list(all=True, filters={"label": "prodg.scratch=restore"})


def test_the_window_audit_names_missing_days_with_one_listing_per_target(bed, three_days, instance):
    assets, checks = bed.definitions()
    result = dg.materialize([*assets, *checks], resources=bed.resources(), instance=instance,
                            selection=dg.AssetSelection.assets(BACKUP_AUDIT),
                            run_config={"ops": {BACKUP_AUDIT: {"config": {"days": 365}}}})
    md = {k: v.value for k, v in result.get_asset_materialization_events()[0].materialization.metadata.items()}
    missing = ", ".join((START + datetime.timedelta(days=i)).isoformat() for i in range(7))
    assert md["window"] == f"{START} … {TODAY - datetime.timedelta(days=1)}"  # clipped to the first partition
    for target in ("postgres", "minio", "configs"):
        assert md[f"{target}_missing_days"] == missing and md[f"{target}_problems"] == 7
    assert md["requests"] == 3 and md["requests_by_operation"] == {"ListObjectsV2": 3}
    (check,) = result.get_asset_check_evaluations()
    assert check.asset_check_key.name == AUDIT_CLEAN and not check.passed
    assert check.metadata["problems"].value == 21


def test_resources_take_secrets_from_the_environment_and_the_secrets_source(bed):
    resources = build_backup_resources(bed.state)
    store = resources["backup_store"]
    assert isinstance(store.access_key_id, dg.EnvVar) and store.access_key_id == "PRODG_TEST_STORE_KEY_ID"
    assert isinstance(store.secret_access_key, dg.EnvVar) and store.secret_access_key == "PRODG_TEST_STORE_SECRET"
    assert store.bucket == BUCKET and store.endpoint_url == bed.store_url
    source = resources["minio_source"]
    assert source.endpoint_url == bed.minio_url and source.access_key_id == "minio-admin"
    assert source.secret_access_key == "" and source.secret_access_key_secret == "MINIO_ROOT_PASSWORD"


def test_schedule_backs_up_the_previous_utc_day_at_03_00(bed, instance):
    backups = backup_definitions(bed.state)
    (schedule,), jobs = backups.schedules, list(backups.jobs)
    assert schedule.name == BACKUP_SCHEDULE
    defs = dg.Definitions(assets=bed.definitions()[0], schedules=[schedule], jobs=jobs,
                          resources=bed.resources())
    resolved = defs.resolve_schedule_def(BACKUP_SCHEDULE)
    assert resolved.cron_schedule == "0 3 * * *" and resolved.execution_timezone == "UTC"
    assert resolved.job_name == BACKUP_JOB
    tick = datetime.datetime.combine(TODAY, datetime.time(3, 0), tzinfo=datetime.timezone.utc)
    requests = resolved.evaluate_tick(dg.build_schedule_context(instance=instance,
                                                                scheduled_execution_time=tick)).run_requests
    assert [r.partition_key for r in requests] == [(TODAY - datetime.timedelta(days=1)).isoformat()]
    assert defs.resolve_job_def(BACKUP_JOB).tags.get("prodg/kind") == "backup"
    backup_job = next(j for j in jobs if j.name == BACKUP_JOB)
    selected = backup_job.selection.resolve(defs.resolve_asset_graph())
    assert {k.to_user_string() for k in selected} == {*BACKUPS, RESTORE_DRILL}


def test_a_deleted_or_corrupted_object_fails_exactly_its_partitions_check(bed, three_days, instance):
    _, metadata = three_days
    client = s3(bed.store_url)
    # postgres, 2nd day: deleted
    client.delete_object(Bucket=BUCKET, Key=metadata[(POSTGRES_BACKUP, DAYS[1])]["object_key"])
    # configs, 3rd day: replaced by other bytes that even claim the recorded sha256
    config_md = metadata[(CONFIG_BACKUP, DAYS[2])]
    client.put_object(Bucket=BUCKET, Key=config_md["object_key"], Body=b"x" * config_md["bytes"],
                      Metadata={"sha256": config_md["sha256"]})
    # minio, 1st day: one mirrored object overwritten with different bytes of the same size
    victim = f"minio/{DAYS[0]}/media/logo.png"
    client.put_object(Bucket=BUCKET, Key=victim, Body=bytes(len(MINIO_OBJECTS[("media", "logo.png")])))
    broken = {(POSTGRES_BACKUP, DAYS[1]), (CONFIG_BACKUP, DAYS[2]), (MINIO_BACKUP, DAYS[0])}
    for asset in BACKUPS:
        for day in DAYS:
            verdicts = bed.run_checks(asset, day, instance)
            assert verdicts[OBJECT_INTACT] is ((asset, day) not in broken), (asset, day, verdicts)
    # the deleted day is now named as missing by the window check (listings only)
    verdicts = bed.run_checks(POSTGRES_BACKUP, DAYS[2], instance)
    assert verdicts[NO_MISSING_DAYS] is False


def test_no_secret_reaches_logs_metadata_or_errors(three_days, instance):
    secrets = [*SECRETS.values(), STORE_SECRET, STORE_KEY_ID]
    for run in instance.get_runs():
        for record in instance.all_logs(run.run_id):
            text = str(record)
            leaked = [s for s in secrets if s in text]
            assert not leaked, (run.job_name, record.dagster_event_type)
