"""Secrets hunted after a real session: deploy, a failing deploy rolled back, a Telegram notification, a secret rotated
in the env file, the stack moved to Infisical (its stand-in) and a value rotated there deployed by the rotation sensor,
a Postgres backup to an S3 API that checks keys (moto with the store's key only) — first tried with a wrong secret,
which the store refuses — its restore drill and `prodg restore` from the command line — then every byte prodg wrote
(the Dagster instance's storage and compute logs, container labels, metadata, run tags, its own output, Telegram's
messages) is searched for every secret value of the test secrets file, the store's secret key and the wrong one.
Zero hits."""

import datetime
import json
import os
import re
import subprocess
import sys
import uuid

import boto3
import dagster as dg
import pytest

from prodg_assets.agekeys import Identity
from tests.conftest import ROOT, TEST_SECRETS, make_testbed
from tests.gitops.test_drift_and_notify import notify
from tests.layers.test_infisical import CLIENT_SECRET, infisical_configured, rotation_request, stand_in, use_infisical
from tests.standins.moto import MotoServer
from tests.standins.telegram import TelegramStandIn

# a whole session (deploys, rotations, backups, restores): about 5 minutes alone, 10 on a busy machine
pytestmark = [pytest.mark.docker, pytest.mark.timeout(1500)]


STORE_KEY_ID = "AKIDHUNT"
STORE_SECRET = "store-Secret-Key-hunted-4e5f6a"
WRONG_STORE_SECRET = "store-Wrong-Secret-hunted-7b8c9d"  # the backup tried first signs with it, and is refused
# the host's backup identity (an age private key) is hunted like the secrets
HUNTED = {**TEST_SECRETS, "PRODG_TEST_STORE_SECRET": STORE_SECRET, "the wrong store secret": WRONG_STORE_SECRET,
          "PRODG_BACKUP_IDENTITY": Identity.generate().text,
          "INFISICAL_CLIENT_SECRET": CLIENT_SECRET,
          "REDIS_PASSWORD rotated in Infisical": "redis-Rotated-In-Infisical-9d1"}
# daily partitions end with the last complete day
TODAY = (datetime.datetime.now(datetime.timezone.utc).date() - datetime.timedelta(days=1)).isoformat()


def hits_in_bytes(data: bytes) -> list[str]:
    return [k for k, v in HUNTED.items() if v.encode() in data]


def backup_and_restore(bed, instance, s3_url: str, restore_out: list[str]) -> None:
    """A backup of the test stack's Postgres signed with a wrong secret (refused, nothing stored), then with the
    store's key, its restore drill, and `prodg restore` into a scratch container."""
    store = boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1", aws_access_key_id=STORE_KEY_ID,
                         aws_secret_access_key=STORE_SECRET)
    store.create_bucket(Bucket="prodg-hunt")
    sha = bed.add_postgres_backups("prodg-hunt", s3_url, TODAY, identity_text=HUNTED["PRODG_BACKUP_IDENTITY"])
    os.environ.update({"PRODG_TEST_STORE_KEY_ID": STORE_KEY_ID, "PRODG_TEST_STORE_SECRET": WRONG_STORE_SECRET,
                       "PRODG_BACKUP_IDENTITY": bed.env["PRODG_BACKUP_IDENTITY"]})
    job = bed.defs().resolve_implicit_global_asset_job_def().get_subset(
        asset_selection={dg.AssetKey("postgres_backup"), dg.AssetKey("postgres_restore_drill")})
    # capture-late: should the suite run on past midnight, yesterday is over by the time it is captured
    tags = {"prodg/commit": sha, "prodg/kind": "backup", "prodg/capture-late": "true"}
    refused = job.execute_in_process(instance=instance, tags=tags, partition_key=TODAY, raise_on_error=False)
    failure = refused.get_step_failure_events()[0].step_failure_data.error.to_string()
    assert not refused.success and "SignatureDoesNotMatch" in failure, failure
    assert store.list_objects_v2(Bucket="prodg-hunt").get("KeyCount") == 0
    os.environ["PRODG_TEST_STORE_SECRET"] = STORE_SECRET
    result = job.execute_in_process(instance=instance, tags=tags, partition_key=TODAY, raise_on_error=False)
    assert result.success
    env = {**os.environ, "DAGSTER_HOME": str(instance.root_directory)}
    proc = subprocess.run([sys.executable, "-m", "prodg_assets.cli", "restore", "postgres", "--date", TODAY],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    restore_out.append(proc.stdout + proc.stderr)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    scratch = re.search(r"into container (\S+):", proc.stdout)
    assert scratch, proc.stdout
    bed.client.containers.get(scratch.group(1)).remove(force=True, v=True)


def test_no_secret_value_anywhere_prodg_writes(tmp_path, docker_client, capfd, measured):
    bed = make_testbed(str(tmp_path / "bed"), docker_client, f"prodgh{uuid.uuid4().hex[:8]}")
    home = tmp_path / "dagster_home"
    home.mkdir()
    old = dict(os.environ)
    try:
        with TelegramStandIn(TEST_SECRETS["TELEGRAM_BOT_TOKEN"]) as telegram, \
                dg.DagsterInstance.from_config(str(home)) as instance:
            bed.env["TELEGRAM_API_URL"] = telegram.url
            os.environ.update(bed.env)
            bed.cleanup()
            assert bed.materialize(instance=instance).success
            bed.edit("hermes-api/app/main.py", 'return {"status": "ok"}', 'return {"status": "ok", "x": 1 / 0}')
            bed.commit("crashing hermes")
            failed = bed.materialize(selection="hermes_api", instance=instance)
            assert not failed.success
            notify(bed, instance, failed)
            assert telegram.messages
            # a secret rotated: the spec hash changes, the value never shows
            with open(bed.env["PRODG_SECRETS_FILE"], "a") as fh:
                fh.write(f"REDIS_PASSWORD={TEST_SECRETS['REDIS_PASSWORD']}-rotated\n")
            assert bed.materialize(selection="redis", instance=instance).success
            restore_out: list[str] = []
            with stand_in() as infisical, MotoServer(keys={STORE_KEY_ID: STORE_SECRET}) as s3:
                # on Infisical: every value read from it, and one rotated there deployed by the rotation sensor
                use_infisical(infisical_configured(bed), infisical)
                assert bed.materialize(selection="secrets_env,postgres,redis", instance=instance).success
                infisical.set("REDIS_PASSWORD", HUNTED["REDIS_PASSWORD rotated in Infisical"])
                request = rotation_request(bed, instance)
                assert isinstance(request, dg.RunRequest), request
                job = bed.defs().resolve_implicit_global_asset_job_def().get_subset(
                    asset_selection=set(request.asset_selection))
                assert job.execute_in_process(instance=instance, tags=request.tags).success
                backup_and_restore(bed, instance, s3.url, restore_out)

            # every place searched, and per place what was found where (names of hunted values, never a value)
            files, metadata, tags, containers, messages, output = {}, {}, {}, {}, {}, {}
            for dirpath, _, names in os.walk(home):
                for name in names:
                    path = os.path.join(dirpath, name)
                    with open(path, "rb") as fh:
                        files[os.path.relpath(path, home)] = hits_in_bytes(fh.read())
            for record in instance.get_event_records(dg.EventRecordsFilter(
                    event_type=dg.DagsterEventType.ASSET_MATERIALIZATION), limit=1000):
                meta = record.asset_materialization.metadata
                metadata[f"{record.asset_key.to_user_string()} ({record.storage_id})"] = hits_in_bytes(
                    json.dumps({k: str(v.value) for k, v in meta.items()}).encode())
            for run in instance.get_runs():
                tags[f"run {run.run_id}"] = hits_in_bytes(json.dumps(run.tags).encode())
            for service, c in bed.containers().items():
                containers[f"container {service}"] = hits_in_bytes(
                    json.dumps(c.labels).encode() + json.dumps(c.attrs["Config"]["Cmd"]).encode())
            for n, message in enumerate(telegram.messages):
                messages[f"message {n + 1}"] = hits_in_bytes(message["text"].encode())
            out, err = capfd.readouterr()
            output["prodg restore"] = hits_in_bytes("".join(restore_out).encode())
            output["this session's stdout/stderr"] = hits_in_bytes((out + err).encode())
            places = {
                "every file under `DAGSTER_HOME` (Dagster's storage and compute logs)": files,
                "materialisation metadata": metadata,
                "run tags": tags,
                "container labels and commands": containers,
                "Telegram messages": messages,
                "prodg's stdout/stderr, `prodg restore`'s output": output,
            }
            found = {place: measured.searched(place, hunted=HUNTED, found=where) for place, where in places.items()}
            empty = [place for place, where in places.items() if not where]
            assert not empty, f"nothing was searched in {empty}"
            assert not any(found.values()), found
    finally:
        bed.cleanup()
        os.environ.clear()
        os.environ.update(old)
