"""Infisical as the secrets source, for real: prodg logs in as a machine identity with Infisical's own SDK
(`infisicalsdk`) and reads the project's secrets from a stand-in speaking Infisical's API at a configurable base URL.
A deploy takes its values from there; a wrong identity or an unreachable Infisical fails the deploy naming the
secret, never its value, and the running container keeps running. `prodg secrets migrate` moves the env file's values
over and reads each back. A value rotated in Infisical recreates exactly the services using it — by the rotation
sensor's tick, or at once through Infisical's signed webhook to `prodg webhook` under `dagster dev`."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
import uuid

import dagster as dg
import pytest
import requests

from prodg_assets.contract import ROTATION_SENSOR
from tests.conftest import TEST_SECRETS
from tests.dagster_dev import dagster_dev, free_port, stop
from tests.layers.test_converge import materializations
from tests.standins.infisical import InfisicalStandIn

CLIENT_ID, CLIENT_SECRET = "prodg-machine-identity", "identity-Secret-7c2f9e41"
PROJECT = "prodg-test-project"
WEBHOOK_KEY = "infisical-webhook-key-31b7"
REQUIRED = ("POSTGRES_PASSWORD", "REDIS_PASSWORD", "HERMES_API_TOKEN", "TELEGRAM_BOT_TOKEN",
            "DAGSTER_UI_BASICAUTH_HASH")


def infisical_configured(bed):
    """The bed's prodg.yaml with an `infisical:` section (the source still the env file until use_infisical)."""
    bed.edit("prodg.yaml", "variables:\n", "variables:\n  INFISICAL_API_URL: http://127.0.0.1:9\n")
    bed.edit("prodg.yaml", "  env_file: ${PRODG_SECRETS_FILE}\n", "  env_file: ${PRODG_SECRETS_FILE}\n"
             f"  infisical:\n    api_base_url: ${{INFISICAL_API_URL}}\n    project_id: {PROJECT}\n"
             "    environment: prod\n")
    bed.commit("Infisical configured")
    bed.env.update({"INFISICAL_CLIENT_ID": CLIENT_ID, "INFISICAL_CLIENT_SECRET": CLIENT_SECRET})
    return bed


@pytest.fixture
def bed(own_bed):
    return infisical_configured(own_bed)


def use_infisical(bed, infisical: InfisicalStandIn) -> None:
    bed.env["INFISICAL_API_URL"] = infisical.url
    bed.edit("prodg.yaml", "  source: env_file\n", "  source: infisical\n")
    bed.commit("secrets from Infisical")
    os.environ.update(bed.env)


def stand_in() -> InfisicalStandIn:
    infisical = InfisicalStandIn(CLIENT_ID, CLIENT_SECRET, PROJECT)
    for name in REQUIRED:
        infisical.set(name, TEST_SECRETS[name])
    return infisical


def env_of(container) -> dict[str, str]:
    container.reload()
    return dict(e.split("=", 1) for e in container.attrs["Config"]["Env"])


def failure_of(result) -> str:
    return [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"][0] \
        .event_specific_data.error.to_string()


def test_a_deploy_reads_infisical_and_a_refused_or_lost_infisical_changes_nothing(bed):
    from_infisical = f"redis-from-Infisical-{uuid.uuid4().hex[:10]}"
    with stand_in() as infisical:
        infisical.set("REDIS_PASSWORD", from_infisical)
        use_infisical(bed, infisical)
        assert bed.materialize(selection="docker_network,redis").success
        redis = bed.containers()["redis"]
        assert env_of(redis)["REDIS_PASSWORD"] == from_infisical  # not the env file's value
        assert infisical.logins >= 1

        bed.edit("compose/docker-compose.yml", "      REDIS_PASSWORD: ${REDIS_PASSWORD}\n",
                 "      REDIS_PASSWORD: ${REDIS_PASSWORD}\n      CHANGED: \"yes\"\n")
        bed.commit("redis: a change to deploy")
        bed.env["INFISICAL_CLIENT_SECRET"] = "not-the-identity-secret"
        os.environ.update(bed.env)
        refused = bed.materialize(selection="redis")
        assert not refused.success
        error = failure_of(refused)
        assert "redis: needs REDIS_PASSWORD from the secrets source" in error
        assert "could not log in (HTTP 401)" in error and "nothing was changed" in error
        assert from_infisical not in error and "not-the-identity-secret" not in error
    bed.env["INFISICAL_CLIENT_SECRET"] = CLIENT_SECRET
    os.environ.update(bed.env)
    lost = bed.materialize(selection="redis")  # the stand-in is gone: connection refused
    assert not lost.success
    assert "could not log in (ConnectionError: unreachable or not answering)" in failure_of(lost)
    assert bed.containers()["redis"].id == redis.id and bed.containers()["redis"].status == "running"


def test_secrets_migrate_moves_the_env_file_into_infisical_and_reads_each_back(bed):
    with InfisicalStandIn(CLIENT_ID, CLIENT_SECRET, PROJECT) as infisical:
        bed.env["INFISICAL_API_URL"] = infisical.url
        env = {**os.environ, **bed.env}
        config = os.path.join(bed.repo, "config")

        def migrate(*flags: str) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-m", "prodg_assets.cli", "secrets", "migrate", *flags, config],
                                  env=env, capture_output=True, text=True, timeout=120)

        dry = migrate("--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert all(f"{name:<28} create" in dry.stdout for name in REQUIRED), dry.stdout
        assert "dry run: nothing written (5 to write)" in dry.stdout
        assert infisical.secrets == {}

        done = migrate()
        assert done.returncode == 0, done.stderr
        assert infisical.secrets == {name: TEST_SECRETS[name] for name in REQUIRED}
        assert all(f"{name:<28} create  read back equal" in done.stdout for name in REQUIRED), done.stdout
        assert "can be removed" in done.stdout
        for value in TEST_SECRETS.values():
            assert value not in done.stdout + done.stderr + dry.stdout + dry.stderr

        with open(bed.env["PRODG_SECRETS_FILE"], "a") as fh:
            fh.write("REDIS_PASSWORD=redis-Changed-In-The-File\n")
        again = migrate("--dry-run")
        assert f"{'REDIS_PASSWORD':<28} update" in again.stdout
        assert f"{'POSTGRES_PASSWORD':<28} unchanged" in again.stdout


def rotation_request(bed, instance) -> dg.RunRequest | dg.SkipReason:
    defs = bed.defs()
    sensor = defs.resolve_sensor_def(ROTATION_SENSOR)
    resources = {k: defs.resources[k] for k in ("docker", "repo", "secrets")}
    with dg.build_sensor_context(instance=instance, resources=resources) as ctx:
        data = sensor.evaluate_tick(ctx)
    return data.run_requests[0] if data.run_requests else data.skip_message


def test_a_value_rotated_in_infisical_recreates_exactly_its_services(bed):
    rotated = f"redis-Rotated-{uuid.uuid4().hex[:10]}"
    with stand_in() as infisical, dg.instance_for_test() as instance:
        use_infisical(bed, infisical)
        assert bed.materialize().success
        before = {s: c.id for s, c in bed.containers().items()}
        assert "no secret changed at its source" in rotation_request(bed, instance)

        infisical.set("REDIS_PASSWORD", rotated)
        request = rotation_request(bed, instance)
        assert {k.to_user_string() for k in request.asset_selection} == {"redis"}
        assert request.tags["prodg/rotated"] == "REDIS_PASSWORD" and request.tags["prodg/kind"] == "rotation"
        job = bed.defs().resolve_implicit_global_asset_job_def().get_subset(
            asset_selection=set(request.asset_selection))
        result = job.execute_in_process(instance=instance, tags=request.tags)
        assert result.success
        meta = materializations(result)["redis"]
        assert meta["action"] == "recreated" and meta["rotated_secrets"] == "REDIS_PASSWORD"
        after = {s: c.id for s, c in bed.containers().items()}
        assert after["redis"] != before["redis"]
        assert {s: i for s, i in after.items() if s != "redis"} == {s: i for s, i in before.items() if s != "redis"}
        assert env_of(bed.containers()["redis"])["REDIS_PASSWORD"] == rotated
        assert "no secret changed at its source" in rotation_request(bed, instance)
        # the new value is nowhere in what the run wrote: its tags, its events, its logs
        records = instance.get_records_for_run(result.run_id).records
        assert rotated not in json.dumps([str(r.event_log_entry) for r in records])
        assert rotated not in json.dumps(instance.get_run_by_id(result.run_id).tags)


def signed(body: bytes, key: str, when_ms: int) -> dict[str, str]:
    signature = hmac.new(key.encode(), body, hashlib.sha256).hexdigest()
    return {"Content-Type": "application/json", "x-infisical-signature": f"t={when_ms};{signature}"}


def test_infisical_s_signed_webhook_has_the_rotation_deployed_at_once(tmp_path, bed):
    rotated = f"redis-Rotated-{uuid.uuid4().hex[:10]}"
    with stand_in() as infisical:
        use_infisical(bed, infisical)
        with dagster_dev(tmp_path, bed, interval_s=600) as dagster:
            first = dagster.finished_run(bed.commits[-1])
            assert first["status"] == "SUCCESS", first
            before = bed.containers()["redis"].id
            port = free_port()
            url = f"http://127.0.0.1:{port}/infisical"
            log = open(tmp_path / "webhook.log", "w")
            listener = subprocess.Popen(
                [sys.executable, "-m", "prodg_assets.cli", "webhook", "--listen", f"127.0.0.1:{port}"],
                env={**os.environ, **bed.env, "PRODG_DAGSTER_URL": dagster.url,
                     "PRODG_INFISICAL_WEBHOOK_SECRET": WEBHOOK_KEY},
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                dagster.wait("the webhook listener", lambda: requests.post(url, timeout=5).status_code == 401)
                infisical.set("REDIS_PASSWORD", rotated)
                now_ms = int(time.time() * 1000)
                body = json.dumps({"event": "secrets.modified", "project": {"workspaceId": PROJECT},
                                   "timestamp": now_ms}, separators=(",", ":")).encode()
                # refused: another key, a stale signature, a body changed after signing
                assert requests.post(url, data=body, headers=signed(body, "another key", now_ms)).status_code == 401
                stale = now_ms - 3_600_000
                assert requests.post(url, data=body, headers=signed(body, WEBHOOK_KEY, stale)).status_code == 401
                assert infisical.send_webhook(url, WEBHOOK_KEY, body_edit=lambda b: b.replace(b"prod", b"dev")) == 401
                assert infisical.send_webhook(url, WEBHOOK_KEY, event="test") == 202
                assert dagster.rotation_runs() == []  # none of these asked for anything

                assert infisical.send_webhook(url, WEBHOOK_KEY, event="secret.modified") == 202  # the docs' name
                run = dagster.wait("the rotation run", lambda: [r for r in dagster.rotation_runs()
                                                                if r["status"] in ("SUCCESS", "FAILURE")])[0]
                assert run["status"] == "SUCCESS", run
                tags = {t["key"]: t["value"] for t in run["tags"]}
                assert tags["prodg/trigger"] == "infisical" and tags["prodg/rotated"] == "REDIS_PASSWORD"
                assert {"/".join(a["path"]) for a in run["assetSelection"]} == {"redis"}
                assert bed.containers()["redis"].id != before
                assert env_of(bed.containers()["redis"])["REDIS_PASSWORD"] == rotated
            finally:
                stop(listener)
                log.close()
