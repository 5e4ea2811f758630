"""A push, told: under `dagster dev` with its real daemon and webserver, and a git sensor that would not tick again for
ten minutes, a signed forge webhook (GitHub's `X-Hub-Signature-256`) to `prodg webhook` deploys the pushed commit at
once — one run, launched as the sensor's own (its name and run key, so the daemon's next tick skips it), tagged with
the commit and `prodg/trigger=push`; Redis is recreated at that commit. A request with a wrong signature or naming
another branch deploys nothing, and a second notification for the same head launches nothing."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
import uuid

import pytest
import requests

from ..conftest import make_testbed
from ..dagster_dev import dagster_dev, free_port, stop

pytestmark = pytest.mark.docker

SECRET = "push-webhook-test-secret"


def post(url: str, payload: dict, secret: str = SECRET) -> requests.Response:
    body = json.dumps(payload).encode()
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return requests.post(url, data=body, timeout=30, headers={
        "Content-Type": "application/json", "X-GitHub-Event": "push", "X-Hub-Signature-256": signature})


def tags_of(run: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["tags"]}


def test_a_signed_webhook_deploys_the_push_without_waiting_for_the_sensor(tmp_path, docker_client):
    bed = make_testbed(str(tmp_path), docker_client, f"prodgw{uuid.uuid4().hex[:8]}")
    with dagster_dev(tmp_path, bed, interval_s=600) as dagster:
        first = dagster.finished_run(bed.commits[-1])  # the sensor's first tick
        assert first["status"] == "SUCCESS", first
        port = free_port()
        hook_url = f"http://127.0.0.1:{port}/"
        log = open(tmp_path / "webhook.log", "w")
        listener = subprocess.Popen(
            [sys.executable, "-m", "prodg_assets.cli", "webhook", "--listen", f"127.0.0.1:{port}"],
            env={**os.environ, **bed.env, "PRODG_DAGSTER_URL": dagster.url, "PRODG_WEBHOOK_SECRET": SECRET},
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            dagster.wait("the webhook listener", lambda: requests.post(hook_url, timeout=5).status_code == 401)
            bed.edit("compose/docker-compose.yml", "      REDIS_PASSWORD: ${REDIS_PASSWORD}\n",
                     "      REDIS_PASSWORD: ${REDIS_PASSWORD}\n      PUSHED: \"yes\"\n")
            pushed = bed.commit("redis: a pushed change")

            refused = post(hook_url, {"ref": "refs/heads/main"}, secret="not the secret")
            assert (refused.status_code, refused.text.strip()) == (401, "signature missing or wrong")
            other = post(hook_url, {"ref": "refs/heads/feature"})  # another branch: acknowledged, nothing evaluated
            assert (other.status_code, other.text.strip()) == (202, "ignored: a push to feature, not main")

            told = post(hook_url, {"ref": "refs/heads/main", "after": pushed})
            assert (told.status_code, told.text.strip()) == (202, "the git sensor evaluates now")
            run = dagster.finished_run(pushed)
            assert run["status"] == "SUCCESS", run
            tags = tags_of(run)
            assert tags["prodg/trigger"] == "push"
            assert tags["prodg/commit"] == pushed
            assert tags["dagster/run_key"].startswith(f"{pushed}:")
            selected = {"/".join(a["path"]) for a in run["assetSelection"]}
            assert "redis" in selected and "postgres" not in selected, selected  # redis and what depends on it
            assert bed.containers()["redis"].labels["prodg.commit"] == pushed
            # the listener evaluated the sensor once, for the signed push to main: neither the refused request nor
            # the other branch's made it evaluate (each evaluation is logged as "push: <outcome>")
            log.flush()
            evaluations = [ln for ln in open(tmp_path / "webhook.log") if " prodg.webhook push: " in ln]
            assert len(evaluations) == 1 and "launched run" in evaluations[0], evaluations

            out = subprocess.run([sys.executable, "-m", "prodg_assets.cli", "notify-push"], capture_output=True,
                                 text=True, env={**os.environ, **bed.env, "PRODG_DAGSTER_URL": dagster.url})
            assert out.returncode == 0, out.stderr
            assert "nothing launched" in out.stdout and "no new commit" in out.stdout, out.stdout
            assert len(dagster.runs_for(pushed)) == 1
        finally:
            stop(listener)
            log.close()
