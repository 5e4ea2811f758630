"""A backup day counts only when a trusted key signed its manifest (issue #30 item 6). Whoever can write to the bucket
knows the recipients (they are in prodg.yaml) and can plant a day — a dump encrypted to them and a manifest that
names it — or write a new version over a locked object. A planted day, unsigned or signed by another key, is refused
by `prodg restore` (nothing is created), failed by the drill and the day's `restored` check, and named by the audit;
a genuine day still restores; a version written over a locked object is never read; a host without its identity
cannot back up at all."""

import datetime
import os
import subprocess

import dagster as dg
import pytest

from prodg_assets.agekeys import Identity, Recipient
from prodg_assets.backups.capture.postgres import Census
from prodg_assets.backups.format.signing import ManifestSigner
from prodg_assets.backups.proofs.audit import UNTRUSTED
from prodg_assets.backups.store.keys import manifest_key
from prodg_assets.backups.store.manifest import Manifest, UntrustedManifest, read_manifest, write_manifest
from prodg_assets.backups.store.stream import stream_backup
from prodg_assets.contract import AUDIT_CLEAN, BACKUP_AUDIT, CONFIG_BACKUP, POSTGRES_BACKUP, RESTORE_DRILL, RESTORED
from prodg_assets.desired import ConfigInvalid, DirTree, load_desired_state
from tests.backups.conftest import BUCKET, EXPECTED_ROWS, TODAY, psql
from tests.backups.test_restore_cli import cli_env
from tests.conftest import PRODG_CLI, ROOT

pytestmark = pytest.mark.docker

GENUINE = (TODAY - datetime.timedelta(days=3)).isoformat()
PLANTED = (TODAY - datetime.timedelta(days=2)).isoformat()
# What a planted dump would run as the Postgres superuser: a database nobody made
PLANTED_SQL = b"create database planted_by_the_bucket;\n"


def plant_postgres_day(bed, store, day: str, signer: ManifestSigner | None) -> str:
    """A day as an attacker with write access to the bucket makes it: a dump encrypted to prodg.yaml's (public)
    recipients and a manifest naming it with its true sha256 and a census the dump satisfies — unsigned, or signed
    by a key of the attacker's own. Returns the manifest's key."""
    recipients = [Recipient.parse(text) for _, text in bed.state.settings.backups.recipients]
    result = stream_backup(store, f"postgres/{day}/pg_dumpall-030000.sql.zst.age", [PLANTED_SQL], "zstd",
                           recipients=recipients)
    manifest = Manifest("postgres", day, f"{day}T03:00:00+00:00", bed.commit, "deployed", "postgres", "", "",
                        "zstd", tuple(r.fingerprint for r in recipients), (result.entry(),),
                        extra={"row_counts": Census(("planted_by_the_bucket", "postgres")).as_json()})
    key = manifest_key("postgres/", day)
    if signer is None:
        store.put_bytes(key, manifest.to_json(), content_type="application/json")
    else:
        write_manifest(store, "postgres/", manifest, signer=signer)
    return key


def failure_text(result) -> str:
    return "\n".join(e.event_specific_data.error.message for e in result.all_events if e.is_step_failure)


def scratch_containers(bed, day: str) -> list:
    """Containers `prodg restore postgres --date day` made (a scratch Postgres it leaves running)."""
    return [c for c in bed.client.containers.list(all=True) if c.name.startswith(f"prodg-restore-{day}-")]


@pytest.mark.parametrize("forger", ["unsigned", "signed by another key"])
def test_a_planted_day_is_refused_by_restore_failed_by_the_drill_and_named_by_the_audit(bed, clean_store, forger):
    store = clean_store
    with dg.instance_for_test() as instance:
        assert bed.materialize([POSTGRES_BACKUP], GENUINE, instance).success
    signer = None if forger == "unsigned" else ManifestSigner.of(Identity.generate())
    key = plant_postgres_day(bed, store, PLANTED, signer)
    env = cli_env(bed)  # the operator's: the host's key is trusted because prodg.yaml lists it
    try:
        # `prodg restore` refuses before it makes anything: no scratch Postgres, no SQL run
        refused = subprocess.run([*PRODG_CLI, "restore", "postgres", "--date", PLANTED, "--identity",
                                  bed.operator_identity_file], env=env, capture_output=True, text=True, timeout=300,
                                 cwd=ROOT)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert f"{key}: not signed by a trusted signer" in refused.stderr and "Traceback" not in refused.stderr
        if signer is not None:
            assert signer.text in refused.stderr  # the key that signed it is named
        assert not scratch_containers(bed, PLANTED)

        with dg.instance_for_test() as instance:
            # the Postgres drill fails naming the day, and no planted database appears anywhere
            drill = bed.materialize([RESTORE_DRILL], PLANTED, instance, raise_on_error=False)
            assert not drill.success
            failure = failure_text(drill)
            assert f"restore drill of {PLANTED}" in failure and "not signed by a trusted signer" in failure
            # the rotating drill's check of that day fails, saying why
            found = bed.run_check_results(POSTGRES_BACKUP, PLANTED, instance, RESTORED)
            assert not found.passed and "not signed by a trusted signer" in found.metadata["verified"].value
            # the window audit names the day, and only it
            assets, checks = bed.definitions()
            audit = dg.materialize([*assets, *checks], resources=bed.resources(), instance=instance,
                                   selection=dg.AssetSelection.assets(BACKUP_AUDIT),
                                   run_config={"ops": {BACKUP_AUDIT: {"config": {"days": 4}}}})
            (clean,) = audit.get_asset_check_evaluations()
            assert clean.asset_check_key.name == AUDIT_CLEAN and not clean.passed
            assert f"postgres {PLANTED}: {UNTRUSTED}" in clean.metadata["details"].value
            assert f"postgres {GENUINE}" not in clean.metadata["details"].value

            # the genuine day still restores and verifies
            genuine = bed.materialize([RESTORE_DRILL], GENUINE, instance)
            rows = genuine.get_asset_materialization_events()[0].materialization.metadata["rows"].value
            assert rows == sum(EXPECTED_ROWS.values())
        assert "planted_by_the_bucket" not in psql(bed.client.api, bed.pg, "select datname from pg_database")
    finally:
        for container in scratch_containers(bed, PLANTED):
            container.remove(force=True, v=True)


def test_a_genuine_manifest_moved_to_another_day_or_target_does_not_verify(bed, clean_store):
    """The signature covers the manifest's key too: a day copied over another (to restore old data in its place)
    is refused, though every byte of it is the host's."""
    store = clean_store
    with dg.instance_for_test() as instance:
        assert bed.materialize([POSTGRES_BACKUP], GENUINE, instance).success
    assert read_manifest(store, "postgres/", GENUINE).partition == GENUINE
    client = store.client
    for key in (manifest_key("postgres/", PLANTED), manifest_key("configs/", GENUINE)):
        client.copy_object(Bucket=BUCKET, Key=key, CopySource={"Bucket": BUCKET,
                                                              "Key": manifest_key("postgres/", GENUINE)})
        assert store.head(key).metadata.get("prodg-signature")  # the signature came along
    with pytest.raises(UntrustedManifest, match="its signature does not match"):
        read_manifest(store, "postgres/", PLANTED)
    with pytest.raises(UntrustedManifest, match="its signature does not match"):
        read_manifest(store, "configs/", GENUINE)


def test_an_operator_without_the_host_identity_trusts_exactly_the_signers_prodg_yaml_lists(bed, clean_store):
    with dg.instance_for_test() as instance:
        assert bed.materialize([POSTGRES_BACKUP], GENUINE, instance).success
    listed = dict(bed.state.settings.backups.signers)  # the bed's prodg.yaml lists its host's key
    assert list(listed) == ["host"]
    trusting = bed.store(identity_file="", signers=listed)
    assert read_manifest(trusting, "postgres/", GENUINE).partition == GENUINE
    with pytest.raises(UntrustedManifest, match=r"its signer \S+ is not one of them \(trusted: none\)"):
        read_manifest(bed.store(identity_file="", signers={}), "postgres/", GENUINE)


def test_a_version_written_over_a_locked_object_is_never_read(bed, locked_store):
    """In a bucket with Object Lock a locked version cannot be deleted, but a new version can be written over it;
    the manifest names the version the backup wrote, and that is what the drill restores."""
    with dg.instance_for_test() as instance:
        assert bed.materialize([POSTGRES_BACKUP], GENUINE, instance, backup_store=locked_store).success
        manifest = read_manifest(locked_store, "postgres/", GENUINE)
        (entry,) = manifest.objects
        assert entry.version_id  # recorded
        recipients = [Recipient.parse(text) for _, text in bed.state.settings.backups.recipients]
        planted = stream_backup(locked_store, entry.object_key, [PLANTED_SQL], "zstd", recipients=recipients)
        assert planted.version_id and planted.version_id != entry.version_id  # the latest version is the plant
        drill = bed.materialize([RESTORE_DRILL], GENUINE, instance, backup_store=locked_store)
        assert drill.success
        md = drill.get_asset_materialization_events()[0].materialization.metadata
        assert md["rows"].value == sum(EXPECTED_ROWS.values()) and md["findings"].value == "none"
        assert bed.run_check_results(POSTGRES_BACKUP, GENUINE, instance, RESTORED).passed


def test_a_backup_without_the_host_identity_fails_naming_the_setting_and_uploads_nothing(bed, clean_store):
    with dg.instance_for_test() as instance:
        result = bed.materialize([CONFIG_BACKUP], GENUINE, instance, raise_on_error=False,
                                 backup_store=bed.store(identity_file=""))
    assert not result.success
    assert "set PRODG_BACKUP_IDENTITY" in failure_text(result)
    assert not list(clean_store.list("configs/"))


def test_a_signer_that_is_not_a_key_is_a_located_config_error(bed, tmp_path):
    root = tmp_path / "config"
    subprocess.run(["cp", "-r", os.path.join(bed.repo, "config"), str(root)], check=True)
    text = (root / "prodg.yaml").read_text()
    (root / "prodg.yaml").write_text(text.replace("signers: {host: ", "signers: {host: age1notakey, old: "))
    with pytest.raises(ConfigInvalid) as caught:
        load_desired_state(DirTree(str(root)), {})
    line = next(i for i, row in enumerate(text.splitlines(), start=1) if row.lstrip().startswith("signers:"))
    assert any(f"prodg.yaml:{line}: backups.signers.host: not base64" in str(e) for e in caught.value.errors), \
        caught.value.errors


@pytest.fixture()
def locked_store(bed):
    """A bucket created with Object Lock (hence versioned), emptied afterwards by lifting governance retention."""
    client = bed.store().client
    bucket = f"{BUCKET}-signed"
    client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    try:
        yield bed.store(bucket=bucket)
    finally:
        for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket):
            for v in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]:
                client.delete_object(Bucket=bucket, Key=v["Key"], VersionId=v["VersionId"],
                                     BypassGovernanceRetention=True)
        client.delete_bucket(Bucket=bucket)
