"""`prodg restore postgres --date D`: the operator's restore, from the store alone (no Dagster database needed)."""

import datetime
import hashlib
import os
import re
import subprocess

import dagster as dg
import pytest

from tests.backups.conftest import MINIO_OBJECTS, SECRETS, STORE_KEY_ID, STORE_SECRET, psql, s3
from tests.conftest import PRODG_CLI, ROOT

pytestmark = pytest.mark.docker


def cli_env(bed) -> dict:
    """The operator's environment: where the config repo is and the store's keys, nothing else."""
    return {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), "PRODG_REPO": bed.repo,
            "PRODG_TEST_STORE_KEY_ID": STORE_KEY_ID, "PRODG_TEST_STORE_SECRET": STORE_SECRET}


def test_prodg_restore_verifies_and_restores_the_days_dump_into_a_scratch_postgres(bed, clean_store):
    day = (datetime.datetime.now(datetime.timezone.utc).date() - datetime.timedelta(days=2)).isoformat()
    with dg.instance_for_test() as instance:
        assert bed.materialize(["postgres_backup"], day, instance).success
    env = cli_env(bed)
    scratch = f"prodg-restore-{day}"  # the scratch container's name, made unique by a random suffix
    try:
        # without the identity the encrypted dump is not opened: one clear line
        locked = subprocess.run([*PRODG_CLI, "restore", "postgres", "--date", day], env=env,
                                capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert locked.returncode == 1 and "give the identity file with --identity" in locked.stderr
        # with the offline operator's identity (the host's would do too)
        proc = subprocess.run([*PRODG_CLI, "restore", "postgres", "--date", day, "--identity",
                               bed.operator_identity_file], env=env, capture_output=True, text=True, timeout=300,
                              cwd=ROOT)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        named = re.search(rf"into container ({re.escape(scratch)}-[0-9a-f]{{6}}):", proc.stdout)
        assert "sha256 verified, decrypted" in proc.stdout and named, proc.stdout
        scratch = named.group(1)
        rows = psql(bed.client.api, scratch, "select count(*) from events", db="hermes")
        assert rows.strip() == psql(bed.client.api, bed.pg, "select count(*) from events", db="hermes").strip()
        # into a target that holds data: refused, one clear line, no traceback
        again = subprocess.run([*PRODG_CLI, "restore", "postgres", "--date", day, "--target", scratch,
                                "--identity", bed.identity_file], env=env, capture_output=True, text=True,
                               timeout=300, cwd=ROOT)
        assert again.returncode == 1 and "Traceback" not in again.stderr
        assert f"{scratch} is not empty" in again.stderr
        missing = subprocess.run([*PRODG_CLI, "restore", "postgres", "--date", "2001-01-01"],
                                 env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert missing.returncode == 1 and "no complete postgres backup for 2001-01-01" in missing.stderr
        assert not any(v in proc.stdout + proc.stderr + again.stderr for v in (*SECRETS.values(), STORE_SECRET))
    finally:
        subprocess.run(["docker", "rm", "-f", "-v", scratch], capture_output=True)


def test_prodg_restore_minio_puts_the_days_objects_back_through_the_s3_api(bed, clean_store):
    day = (datetime.datetime.now(datetime.timezone.utc).date() - datetime.timedelta(days=2)).isoformat()
    with dg.instance_for_test() as instance:
        assert bed.materialize(["minio_backup"], day, instance).success
    env = cli_env(bed)
    minio = s3(bed.minio_url)
    restored = f"restored-{os.getpid()}"

    def cli(*args):
        return subprocess.run([*PRODG_CLI, "restore", "minio", "--date", day, "--identity", bed.identity_file, *args],
                              env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)

    def bucket_sha256(bucket: str) -> dict:
        keys = [o["Key"] for o in minio.list_objects_v2(Bucket=bucket).get("Contents", [])]
        return {k: hashlib.sha256(minio.get_object(Bucket=bucket, Key=k)["Body"].read()).hexdigest() for k in keys}

    try:
        # over the live buckets, whose objects are all there: refused, nothing written
        refused = cli()
        assert refused.returncode == 1 and "already exist in MinIO" in refused.stderr, refused.stderr
        done = cli("--to", restored)
        assert done.returncode == 0, done.stderr
        assert "restored 4 objects" in done.stdout and "each object's sha256 as captured" in done.stdout
        assert bucket_sha256(restored) == {k: hashlib.sha256(v).hexdigest() for (b, k), v in MINIO_OBJECTS.items()}
        # a prefix of one bucket, into another bucket
        only = cli("--to", f"{restored}-videos", "--only", "media/videos/")
        assert only.returncode == 0, only.stderr
        assert bucket_sha256(f"{restored}-videos") == {
            "videos/intro.mp4": hashlib.sha256(MINIO_OBJECTS[("media", "videos/intro.mp4")]).hexdigest()}
        again = cli("--to", restored)
        assert again.returncode == 1 and "give --force" in again.stderr
        assert cli("--to", restored, "--force").returncode == 0
    finally:
        for bucket in (restored, f"{restored}-videos"):
            for o in minio.list_objects_v2(Bucket=bucket).get("Contents", []) if bucket in {
                    b["Name"] for b in minio.list_buckets()["Buckets"]} else []:
                minio.delete_object(Bucket=bucket, Key=o["Key"])
            if bucket in {b["Name"] for b in minio.list_buckets()["Buckets"]}:
                minio.delete_bucket(Bucket=bucket)


def test_prodg_restore_configs_lays_the_tree_out_as_the_repo_and_checks_it_against_its_commit(bed, clean_store,
                                                                                              tmp_path):
    day = (datetime.datetime.now(datetime.timezone.utc).date() - datetime.timedelta(days=2)).isoformat()
    with dg.instance_for_test() as instance:
        assert bed.materialize(["config_backup"], day, instance).success
    env = cli_env(bed)

    def cli(*args):
        return subprocess.run([*PRODG_CLI, "restore", "configs", "--date", day, "--identity", bed.identity_file,
                               *args], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)

    no_folder = cli()
    assert no_folder.returncode == 1 and "--to" in no_folder.stderr
    done = cli("--to", str(tmp_path / "restored"))
    assert done.returncode == 0, done.stderr
    assert f"identical to commit {bed.commit[:12]}" in done.stdout
    with open(tmp_path / "restored" / "config" / "prodg.yaml", "rb") as fh, \
            open(os.path.join(bed.repo, "config", "prodg.yaml"), "rb") as live:
        assert fh.read() == live.read()
    # over the tree it restored before: refused, then moved aside with --force
    assert "already holds data" in cli("--to", str(tmp_path / "restored")).stderr
    again = cli("--to", str(tmp_path / "restored"), "--force")
    assert again.returncode == 0 and "what was there is in" in again.stdout, again.stderr
