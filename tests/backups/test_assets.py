"""The backup assets against real parts: three daily partitions of postgres_backup, minio_backup and config_backup
materialised into the off-site store (moto) — the oldest a forced late capture — encrypted (opened by the plain
`age` CLI with the operator's identity, and by nothing else), each with its manifest, verified by downloading; then
the restore drill, and finally objects deleted or corrupted by hand, which must fail exactly their own partition's
check."""

import datetime
import hashlib
import io
import subprocess
import tarfile

import dagster as dg
import pytest

from prodg_assets.backups.assets.definitions import backup_definitions, build_backup_resources
from prodg_assets.backups.store.client import BackupStore
from prodg_assets.backups.store.manifest import Manifest
from prodg_assets.backups.store.objects import StoreError
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
    RESTORED,
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
    age_decrypt,
    expected_requests,
)
from tests.standins.infisical import InfisicalStandIn

pytestmark = pytest.mark.docker

# A day's partition exists once the day is over; yesterday's is the nightly run's, the two before are late captures.
# Every one is backed up with prodg/capture-late=true: should the suite run on past midnight, yesterday's day is
# over by the time it is captured (then it is marked captured_late too, as the rule says).
DAYS = [(TODAY - datetime.timedelta(days=n)).isoformat() for n in (3, 2, 1)]
RECENT = DAYS[2]


def late_when(day: str, captured_at: str) -> bool:
    """The rule a manifest's captured_late follows: its day was over (before the capture's yesterday)."""
    at = datetime.datetime.fromisoformat(captured_at)
    return datetime.date.fromisoformat(day) < at.date() - datetime.timedelta(days=1)


def window_days(window: str) -> list[str]:
    """The days of a check's or audit's `window` ("start … end": the first partition to yesterday, as of when it
    ran)."""
    start, end = (datetime.date.fromisoformat(d) for d in window.split(" … "))
    assert start == START and end in (TODAY - datetime.timedelta(days=1), TODAY), window  # TODAY once past midnight
    return [(start + datetime.timedelta(days=i)).isoformat() for i in range((end - start).days + 1)]


def missing_in(window: str, made: list[str]) -> list[str]:
    return [d for d in window_days(window) if d not in made]
BACKUPS = [POSTGRES_BACKUP, MINIO_BACKUP, CONFIG_BACKUP]
PREFIX = {POSTGRES_BACKUP: "postgres/", MINIO_BACKUP: "minio/", CONFIG_BACKUP: "configs/"}


@pytest.fixture(scope="module")
def instance():
    with dg.instance_for_test() as inst:
        yield inst


@pytest.fixture(scope="module")
def three_days(bed, instance):
    """Each day's partition of the three backups (with their checks): the two days before yesterday as an
    operator's forced late backfill (tag prodg/capture-late=true), yesterday as the nightly run would do it (with the
    tag too, see DAYS)."""
    store = bed.store()
    store.delete_objects([o.key for o in store.list()])
    results = {day: bed.materialize(BACKUPS, day, instance) for day in DAYS}
    metadata = {}
    for day, result in results.items():
        for event in result.get_asset_materialization_events():
            mat = event.event_specific_data.materialization
            metadata[(mat.asset_key.to_user_string(), day)] = {k: v.value for k, v in mat.metadata.items()}
    return results, metadata


def manifest_of(store, prefix: str, day: str) -> Manifest:
    return Manifest.from_json(store.read_bytes(f"{prefix}{day}/manifest.json"))


def test_each_partition_is_its_objects_and_a_manifest_with_checksums_verified_by_download(bed, three_days):
    results, metadata = three_days
    assert all(r.success for r in results.values())
    store = bed.store()
    listed = [o.key for o in store.list()]
    for asset in BACKUPS:
        for day in DAYS:
            md = metadata[(asset, day)]
            manifest = manifest_of(store, PREFIX[asset], day)
            assert md["manifest_key"] == f"{PREFIX[asset]}{day}/manifest.json" in listed
            assert hashlib.sha256(store.read_bytes(md["manifest_key"])).hexdigest() == md["manifest_sha256"]
            assert sorted(k for k in listed if k.startswith(f"{PREFIX[asset]}{day}/")) == \
                sorted([md["manifest_key"], *(e.object_key for e in manifest.objects
                                              if asset != MINIO_BACKUP)])  # MinIO's: stored by content, elsewhere
            assert {e.object_key for e in manifest.objects} <= set(listed)
            for entry in manifest.objects:  # every object as the manifest says, hashed by downloading it
                assert store.sha256_of(entry.object_key) == (entry.sha256, entry.bytes)
                assert entry.object_key.endswith(".age")
            assert manifest.commit == md["commit"] == bed.commit and md["commit_source"] == "run tag"
            assert manifest.captured_at == md["captured_at"]
            assert manifest.recipients == tuple(md["encryption"].removeprefix("age to ").split(", "))
            assert len(manifest.recipients) == 2
            assert manifest.captured_late is md["captured_late"] is late_when(day, md["captured_at"])
            assert md["captured_late"] or day == RECENT
    for asset in (POSTGRES_BACKUP, CONFIG_BACKUP):
        for day in DAYS:
            md = metadata[(asset, day)]
            assert md["sha256"] == manifest_of(store, PREFIX[asset], day).objects[0].sha256
            assert 0 < md["bytes"] < md["raw_bytes"]
            assert isinstance(md["duration_s"], float) and isinstance(md["throughput_mb_s"], float)
    for n, day in enumerate(DAYS):
        manifest = manifest_of(store, "minio/", day)
        assert manifest.extra["object_count"] == len(manifest.objects) == len(MINIO_OBJECTS)
        assert manifest.raw_bytes == sum(len(v) for v in MINIO_OBJECTS.values())
        for entry in manifest.objects:
            content = hashlib.sha256(MINIO_OBJECTS[(entry.bucket, entry.key)]).hexdigest()
            assert entry.content_sha256 == content  # stored once by content, named by every day that holds it
            assert entry.object_key == f"minio/objects/{content[:2]}/{content}.age"
            assert entry.raw_bytes == len(MINIO_OBJECTS[(entry.bucket, entry.key)])
        # MinIO did not change between the days: the first uploads every object, the others their manifest alone
        md = metadata[(MINIO_BACKUP, day)]
        if n == 0:
            assert md["uploaded_objects"] == len(MINIO_OBJECTS) and md["reused_objects"] == 0
        else:
            assert md["uploaded_objects"] == 0 and md["reused_objects"] == len(MINIO_OBJECTS)
            assert md["uploaded_bytes"] == md["manifest_bytes"]


def test_what_leaves_the_host_is_ciphertext_that_the_age_cli_alone_opens(bed, three_days):
    """No row value, dump text or object byte in any stored object; the plain `age` CLI with the operator's
    identity (and `zstd`) gives back the dump, the config tree and every MinIO object; another identity gets
    nothing."""
    _, metadata = three_days
    store = bed.store()
    plain_markers = [b"event 1234", b"grace", b"label-17", b"CREATE TABLE", b"pg_dumpall",
                     MINIO_OBJECTS[("uploads", "a/b/c.txt")]]
    for obj in store.list():
        data = store.read_bytes(obj.key)
        if obj.key.endswith("/manifest.json"):
            continue  # plain JSON of keys, sizes and hashes: no data
        assert data.startswith(b"age-encryption.org/v1\n"), obj.key
        assert not [m for m in plain_markers if m in data], obj.key
        assert b"\x28\xb5\x2f\xfd" not in data[:200]  # not a zstd frame
    dump_key = metadata[(POSTGRES_BACKUP, RECENT)]["object_key"]
    dump = subprocess.run(["zstd", "-dc"], input=age_decrypt(store.read_bytes(dump_key), bed.operator_identity_file),
                          capture_output=True, check=True).stdout
    assert b"CREATE DATABASE hermes" in dump and b"grace" in dump
    tar_bytes = subprocess.run(["zstd", "-dc"], capture_output=True, check=True, input=age_decrypt(
        store.read_bytes(metadata[(CONFIG_BACKUP, RECENT)]["object_key"]), bed.operator_identity_file)).stdout
    assert b"pg_dumpall" in tarfile.open(fileobj=io.BytesIO(tar_bytes)).extractfile("config/prodg.yaml").read()
    for entry in manifest_of(store, "minio/", RECENT).objects:
        assert age_decrypt(store.read_bytes(entry.object_key), bed.operator_identity_file) == \
            MINIO_OBJECTS[(entry.bucket, entry.key)]
    stranger = subprocess.run(["age-keygen"], capture_output=True, check=True, text=True).stdout
    with open(f"{bed.repo}/../stranger.agekey", "w") as fh:
        fh.write(stranger)
    with pytest.raises(AssertionError, match="no identity matched"):
        age_decrypt(store.read_bytes(dump_key), f"{bed.repo}/../stranger.agekey")


def test_metadata_names_commit_source_and_the_census(bed, three_days):
    _, metadata = three_days
    pg = metadata[(POSTGRES_BACKUP, RECENT)]
    image_id = bed.client.api.inspect_container(bed.pg)["Image"]
    assert pg["source"] == f"{bed.pg} @ {image_id}" and pg["source_image_id"] == image_id
    assert pg["object_key"].endswith(".sql.zst.age") and pg["compression"] == "zstd"
    assert pg["row_counts"]["rows"] == EXPECTED_ROWS
    assert pg["databases"] == "hermes, infisical, postgres"
    assert pg["dumped_through"] == "a helper container (FIFO)"  # an Engine on this machine: the fast route
    assert manifest_of(bed.store(), "postgres/", RECENT).extra["row_counts"]["rows"] == EXPECTED_ROWS
    config = metadata[(CONFIG_BACKUP, RECENT)]
    assert config["object_key"] == f"configs/{RECENT}/config-{bed.commit[:12]}.tar.zst.age"
    assert bed.commit in config["source"]


def test_the_data_version_is_the_stored_objects_sha256(bed, three_days, instance):
    _, metadata = three_days
    for asset in (POSTGRES_BACKUP, CONFIG_BACKUP):
        record = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[RECENT]), limit=1).records[0]
        assert record.asset_materialization.tags["dagster/data_version"] == metadata[(asset, RECENT)]["sha256"]


def test_a_late_capture_is_refused_unless_forced_and_an_earlier_one_is_recorded_again(bed, three_days, instance):
    _, metadata = three_days
    store = bed.store()
    before = sorted((o.key, o.etag) for o in store.list())
    # a day that is over and was never captured: refused, nothing written
    never = (TODAY - datetime.timedelta(days=5)).isoformat()
    result = bed.materialize([POSTGRES_BACKUP], never, instance, raise_on_error=False, late=False)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    text = failure.event_specific_data.error.message
    assert f"{never}: that day is over" in text and "prodg/capture-late=true" in text
    assert sorted((o.key, o.etag) for o in store.list()) == before
    # a day that is over and was captured: recorded again from its manifest, nothing captured anew
    again = bed.materialize([POSTGRES_BACKUP], DAYS[0], instance, late=False)
    md = {k: v.value for k, v in again.get_asset_materialization_events()[0].materialization.metadata.items()}
    assert md["recaptured"] is False and md["captured_at"] == metadata[(POSTGRES_BACKUP, DAYS[0])]["captured_at"]
    assert md["sha256"] == metadata[(POSTGRES_BACKUP, DAYS[0])]["sha256"] and md["captured_late"] is True
    assert sorted((o.key, o.etag) for o in store.list()) == before
    # the forced one says both dates
    late = metadata[(POSTGRES_BACKUP, DAYS[0])]
    assert late["captured_late"] is True and late["late"] == f"data of {late['captured_at'][:10]} stored as {DAYS[0]}"
    assert late["captured_at"][:10] > DAYS[0]


def test_checks_pass_per_partition_and_name_the_missing_days_of_the_window(three_days):
    results, _ = three_days
    for day, result in results.items():
        verdicts = {(e.asset_key.to_user_string(), e.asset_check_key.name): e for e in
                    result.get_asset_check_evaluations()}
        for asset in BACKUPS:
            assert verdicts[(asset, OBJECT_INTACT)].passed, verdicts[(asset, OBJECT_INTACT)].metadata
            assert verdicts[(asset, FRESH)].passed
            gaps = verdicts[(asset, NO_MISSING_DAYS)]
            # start_date is 10 days ago; three days are backed up, one per run
            expected = missing_in(gaps.metadata["window"].value, [d for d in DAYS if d <= day])
            assert not gaps.passed and len(expected) >= 7
            assert gaps.metadata["missing_days"].value == ", ".join(expected)


def test_restore_drill_restores_the_dump_and_matches_the_census(bed, three_days, instance):
    result = bed.materialize([RESTORE_DRILL], RECENT, instance)
    assert result.success
    md = {k: v.value for k, v in result.get_asset_materialization_events()[0].materialization.metadata.items()}
    assert md["rows"] == sum(EXPECTED_ROWS.values()) and md["tables"] == len(EXPECTED_ROWS)
    host = subprocess.run(["age-keygen", "-y", bed.identity_file], capture_output=True, text=True, check=True)
    assert md["decrypted_with"] == "sha256:" + hashlib.sha256(host.stdout.strip().encode()).hexdigest()[:16]
    assert md["databases"] == "hermes, infisical, postgres"
    assert md["findings"] == "none"
    # this drill's scratch Postgres is gone (this one, by its name: other runs' drills may be running)
    assert md["scratch_container"].startswith(f"prodg-restore-drill-{RECENT}-")
    assert not [c for c in bed.client.containers.list(all=True, filters={"label": "prodg.scratch=restore"})
                if c.name == md["scratch_container"]]


def test_the_window_audit_names_missing_and_late_days_from_manifests(bed, three_days, instance):
    assets, checks = bed.definitions()
    result = dg.materialize([*assets, *checks], resources=bed.resources(), instance=instance,
                            selection=dg.AssetSelection.assets(BACKUP_AUDIT),
                            run_config={"ops": {BACKUP_AUDIT: {"config": {"days": 365}}}})
    md = {k: v.value for k, v in result.get_asset_materialization_events()[0].materialization.metadata.items()}
    missing = missing_in(md["window"], DAYS)  # the window is clipped to the first partition
    for target in ("postgres", "minio", "configs"):
        assert md[f"{target}_missing_days"] == ", ".join(missing) and md[f"{target}_problems"] == len(missing)
        late = md[f"{target}_captured_late"].split(", ")
        marked = [d for d in DAYS if manifest_of(bed.store(), f"{target}/", d).captured_late]
        assert DAYS[:2] == marked[:2] and [d.split(" ")[0] for d in late] == marked
        assert f"(captured {DAYS[0]}" not in late[0]
    # a listing per target, and one GET per manifest of the window
    made = [d for d in window_days(md["window"]) if d in DAYS]
    named = sum(len(manifest_of(bed.store(), prefix, day).objects) for prefix in ("postgres/", "minio/", "configs/")
                for day in made)
    assert md["requests_by_operation"] == expected_requests(bed.store(), 3, 3 * len(made), named)
    (check,) = result.get_asset_check_evaluations()
    assert check.asset_check_key.name == AUDIT_CLEAN and not check.passed
    assert check.metadata["problems"].value == 3 * len(missing)


def test_resources_take_secrets_from_the_environment_and_the_secrets_source(bed, tmp_path, monkeypatch):
    resources = build_backup_resources(bed.state)
    store = resources["backup_store"]
    # only names and a path are config (the UI shows it): never a key
    assert (store.access_key_id, store.secret_access_key) == ("", "")
    assert store.access_key_id_env == "PRODG_TEST_STORE_KEY_ID"
    assert store.secret_access_key_env == "PRODG_TEST_STORE_SECRET"
    assert store.key_source["source"] == "env_file" and store.key_source["env_file"] == bed.secrets_file
    assert store.bucket == BUCKET and store.endpoint_url == bed.store_url
    config = {k: getattr(store, k) for k in ("endpoint_url", "region", "bucket", "access_key_id_env",
                                             "secret_access_key_env")}
    in_file = {"source": "env_file", "env_file": bed.secrets_file}
    # neither in the environment nor in the secrets file: one clear line naming what is missing
    monkeypatch.delenv("PRODG_TEST_STORE_KEY_ID", raising=False)
    monkeypatch.delenv("PRODG_TEST_STORE_SECRET", raising=False)
    with pytest.raises(StoreError, match="PRODG_TEST_STORE_KEY_ID, PRODG_TEST_STORE_SECRET is set neither"):
        list(BackupStore(**config, key_source=in_file).list())
    # and the error path's scrubbing still works without keys (there are none to hide)
    assert BackupStore(**config, key_source=in_file).scrub("listing failed") == "listing failed"
    # in the secrets file (how a run container of docker/prod gets B2_KEY_SECRET: from its mount)
    keys_file = tmp_path / "secrets.env"
    keys_file.write_text(f"PRODG_TEST_STORE_KEY_ID={STORE_KEY_ID}\nPRODG_TEST_STORE_SECRET={STORE_SECRET}\n")
    from_file = BackupStore(**config, key_source={"source": "env_file", "env_file": str(keys_file)})
    list(from_file.list())
    assert from_file._credentials() == (STORE_KEY_ID, STORE_SECRET)
    # in Infisical, read when the store is first used: a key rotated there is what the next run's store uses
    with InfisicalStandIn("id-1", "secret-1", "proj-1") as infisical:
        infisical.set("PRODG_TEST_STORE_KEY_ID", "old-key-id")
        infisical.set("PRODG_TEST_STORE_SECRET", "old-secret")
        monkeypatch.setenv("INFISICAL_CLIENT_ID", "id-1")
        monkeypatch.setenv("INFISICAL_CLIENT_SECRET", "secret-1")
        in_infisical = {"source": "infisical", "infisical_url": infisical.url, "infisical_project_id": "proj-1"}
        assert BackupStore(**config, key_source=in_infisical)._credentials() == ("old-key-id", "old-secret")
        infisical.set("PRODG_TEST_STORE_KEY_ID", STORE_KEY_ID)
        infisical.set("PRODG_TEST_STORE_SECRET", STORE_SECRET)
        rotated = BackupStore(**config, key_source=in_infisical)
        list(rotated.list())
        assert rotated._credentials() == (STORE_KEY_ID, STORE_SECRET)
    with pytest.raises(StoreError, match="no key for the backup store .*Infisical"):  # Infisical gone: said so
        BackupStore(**config, key_source=in_infisical)._credentials()
    # the environment wins over the file
    keys_file.write_text("PRODG_TEST_STORE_KEY_ID=wrong\nPRODG_TEST_STORE_SECRET=wrong\n")
    monkeypatch.setenv("PRODG_TEST_STORE_KEY_ID", STORE_KEY_ID)
    monkeypatch.setenv("PRODG_TEST_STORE_SECRET", STORE_SECRET)
    store = BackupStore(**config, key_source={"source": "env_file", "env_file": str(keys_file)})
    list(store.list())
    assert store._credentials() == (STORE_KEY_ID, STORE_SECRET)
    source = resources["minio_source"]
    assert source.endpoint_url == bed.minio_url and source.access_key_id == "minio-admin"
    assert source.secret_access_key == "" and source.secret_access_key_secret == "MINIO_ROOT_PASSWORD"


def test_schedule_backs_up_the_previous_utc_day_at_03_00(bed, instance):
    backups = backup_definitions(bed.state)
    schedule = next(s for s in backups.schedules if s.name == BACKUP_SCHEDULE)
    jobs = list(backups.jobs)
    defs = dg.Definitions(assets=bed.definitions()[0], asset_checks=bed.definitions()[1], schedules=[schedule],
                          jobs=jobs, resources=bed.resources())
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
    # the nightly run checks each day's objects, and leaves the full restores to the rotating drill
    checks = {k.name for k in backup_job.selection.resolve_checks(defs.resolve_asset_graph())}
    assert OBJECT_INTACT in checks and RESTORED not in checks


def test_a_deleted_or_corrupted_object_fails_exactly_its_partitions_check(bed, three_days, instance):
    _, metadata = three_days
    client = bed.store().client
    # postgres, 2nd day: deleted
    client.delete_object(Bucket=BUCKET, Key=metadata[(POSTGRES_BACKUP, DAYS[1])]["object_key"])
    # configs, 3rd day: replaced by other bytes of the same size
    config_md = metadata[(CONFIG_BACKUP, DAYS[2])]
    client.put_object(Bucket=BUCKET, Key=config_md["object_key"], Body=b"x" * config_md["bytes"])
    # minio: one stored object overwritten with different bytes of the same size — every day names it (MinIO did
    # not change), so every day's check fails
    victim = next(e.object_key for e in manifest_of(bed.store(), "minio/", DAYS[0]).objects
                  if (e.bucket, e.key) == ("media", "logo.png"))
    size = bed.store().head(victim).size
    client.put_object(Bucket=BUCKET, Key=victim, Body=bytes(size))
    broken = {(POSTGRES_BACKUP, DAYS[1]), (CONFIG_BACKUP, DAYS[2]), *((MINIO_BACKUP, d) for d in DAYS)}
    for asset in BACKUPS:
        for day in DAYS:
            verdicts = bed.run_checks(asset, day, instance)
            assert verdicts[OBJECT_INTACT] is ((asset, day) not in broken), (asset, day, verdicts)
    # a day whose manifest is deleted is named as missing by the window check
    before = bed.check_evaluations(POSTGRES_BACKUP, DAYS[2], instance)[NO_MISSING_DAYS]
    client.delete_object(Bucket=BUCKET, Key=f"postgres/{DAYS[1]}/manifest.json")
    after = bed.check_evaluations(POSTGRES_BACKUP, DAYS[2], instance)[NO_MISSING_DAYS]
    assert DAYS[1] not in before.metadata["missing_days"].value.split(", ")
    assert after.passed is False and DAYS[1] in after.metadata["missing_days"].value.split(", ")


def test_no_secret_reaches_logs_metadata_or_errors(three_days, instance):
    secrets = [*SECRETS.values(), STORE_SECRET, STORE_KEY_ID]
    for run in instance.get_runs():
        for record in instance.all_logs(run.run_id):
            text = str(record)
            leaked = [s for s in secrets if s in text]
            assert not leaked, (run.job_name, record.dagster_event_type)


def test_the_config_backup_records_the_commit_live_on_the_host_not_the_runs_tag(bed):
    """The host runs what the newest service materialisation deployed; a backup run tagged with another commit (the
    branch head moved on, nothing deployed yet) still archives and records the deployed one."""
    bucket = f"{BUCKET}-deployed"  # its own bucket: the module's three days stay as they are
    client = bed.store().client
    client.create_bucket(Bucket=bucket)
    store = bed.store(bucket=bucket)
    try:
        with dg.instance_for_test() as instance:
            instance.report_runless_asset_event(dg.AssetMaterialization(asset_key="postgres",
                                                                        metadata={"commit": bed.commit}))
            result = bed.materialize([CONFIG_BACKUP], RECENT, instance, commit="f" * 40, backup_store=store)
            assert result.success
            md = {k: v.value for k, v in
                  result.get_asset_materialization_events()[0].materialization.metadata.items()}
        assert md["commit"] == bed.commit and md["commit_source"] == "deployed"
        assert md["object_key"] == f"configs/{RECENT}/config-{bed.commit[:12]}.tar.zst.age"
        assert Manifest.from_json(store.read_bytes(md["manifest_key"])).commit == bed.commit
    finally:
        store.delete_objects([o.key for o in store.list()])
        client.delete_bucket(Bucket=bucket)
