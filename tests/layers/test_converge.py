"""The heart of the product, against the real Engine: materialising the layers brings the test stack up healthy,
re-applying changes nothing, one changed service is the only one recreated, and a failing image rolls back."""

from __future__ import annotations

import socket
import ssl
import subprocess
import time

import pytest
import requests

from tests.conftest import TEST_SECRETS, Testbed

pytestmark = pytest.mark.docker

SERVICES = {"postgres", "redis", "hermes-api", "caddy", "node-exporter", "prometheus"}


def check_results(result) -> dict[str, bool]:
    return {e.asset_check_evaluation_data.check_name: e.asset_check_evaluation_data.passed
            for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"}


def check_problems(result) -> dict[str, str]:
    return {e.asset_check_evaluation_data.check_name:
            str(e.asset_check_evaluation_data.metadata.get("problems", "").value)
            for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"
            and not e.asset_check_evaluation_data.passed}


def materializations(result) -> dict[str, dict]:
    out = {}
    for e in result.all_events:
        if e.event_type_value == "ASSET_MATERIALIZATION":
            m = e.event_specific_data.materialization
            out[m.asset_key.to_user_string()] = {k: v.value for k, v in m.metadata.items()}
    return out


@pytest.fixture(scope="module")
def deployed(testbed: Testbed):
    result = testbed.materialize()
    return testbed, result


def test_empty_engine_to_healthy_stack_with_all_checks_green(deployed):
    bed, result = deployed
    assert result.success, check_problems(result)
    checks = check_results(result)
    assert checks and all(checks.values()), checks
    for name in ("host_conforms", "exposure", "network_matches", "secrets_complete_and_private",
                 "postgres_accepts_query", "redis_answers_ping", "prometheus_targets_up", "hermes_health_and_auth",
                 "certificates_valid"):
        assert checks.get(name) is True, f"{name}: {checks.get(name)}"
    live = bed.containers()
    assert set(live) == SERVICES
    for service, c in live.items():
        assert c.status == "running", service
        assert c.labels["prodg.commit"] == bed.commits[-1]
    mats = materializations(result)
    for service in SERVICES:
        meta = mats[service.replace("-", "_")]
        assert meta["action"] == "created"
        assert meta["commit"] == bed.commits[-1]
        assert meta["container_id"] == live[service].id
    # Hermes was built from the repo at the commit and tagged with it.
    assert f"prodg/hermes-api:{bed.commits[-1][:12]}" in live["hermes-api"].image.tags


def test_test_stack_answers_on_its_real_protocols(deployed):
    bed, _ = deployed
    # Postgres accepts an authenticated query (through the real client, in the container).
    out = subprocess.run(["docker", "exec", "-e", f"PGPASSWORD={TEST_SECRETS['POSTGRES_PASSWORD']}",
                          f"{bed.project}-postgres", "psql", "-h", "127.0.0.1", "-U", "postgres", "-tAc",
                          "select 40 + 2"], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "42"
    # Redis answers PING with its password, and refuses without it.
    with socket.create_connection(("127.0.0.1", 26379), timeout=5) as s:
        s.sendall(b"PING\r\n")
        assert s.recv(100).startswith(b"-NOAUTH")
    # Caddy serves HTTPS with its internal CA for the public domain, proxying Hermes.
    ctx = ssl.create_default_context(cafile=bed.env["PRODG_TLS_CA_FILE"])
    with socket.create_connection(("127.0.0.1", 28443), timeout=5) as sock:
        with ctx.wrap_socket(sock, server_hostname="api.mainframe.prodg.studio") as tls:
            tls.sendall(b"GET /health HTTP/1.1\r\nHost: api.mainframe.prodg.studio\r\nConnection: close\r\n\r\n")
            reply = tls.recv(4096)
    assert reply.startswith(b"HTTP/1.1 200") and b'"ok"' in reply
    # Prometheus reports its targets, all up.
    deadline = time.time() + 30
    while True:
        targets = requests.get("http://127.0.0.1:29090/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
        health = {t["labels"]["job"]: t["health"] for t in targets}
        if all(h == "up" for h in health.values()) or time.time() > deadline:
            break
        time.sleep(1)
    assert health == {"prometheus": "up", "caddy": "up", "node-exporter": "up", "hermes-api": "up"}


def test_second_apply_recreates_nothing(deployed):
    bed, _ = deployed
    before = {s: c.id for s, c in bed.containers().items()}
    result = bed.materialize()
    assert result.success
    assert {s: m["action"] for s, m in materializations(result).items() if s.replace("_", "-") in SERVICES} == \
        {s.replace("-", "_"): "unchanged" for s in SERVICES}
    assert {s: c.id for s, c in bed.containers().items()} == before


def test_changing_one_services_environment_recreates_only_that_container(deployed):
    bed, _ = deployed
    before = {s: c.id for s, c in bed.containers().items()}
    bed.edit("compose/docker-compose.yml", "      REDIS_PASSWORD: ${REDIS_PASSWORD}\n",
             "      REDIS_PASSWORD: ${REDIS_PASSWORD}\n      REDIS_MAXCLIENTS: \"500\"\n")
    sha = bed.commit("redis: add REDIS_MAXCLIENTS")
    result = bed.materialize()
    assert result.success
    after = {s: c.id for s, c in bed.containers().items()}
    assert after["redis"] != before["redis"]
    assert {s: i for s, i in after.items() if s != "redis"} == {s: i for s, i in before.items() if s != "redis"}
    meta = materializations(result)["redis"]
    assert meta["action"] == "recreated" and meta["commit"] == sha
    assert "env" in meta["diff"] and "REDIS_MAXCLIENTS" in meta["diff"]
    env = bed.containers()["redis"].attrs["Config"]["Env"]
    assert "REDIS_MAXCLIENTS=500" in env


def test_failing_healthcheck_rolls_back_and_service_keeps_answering(deployed):
    bed, _ = deployed
    old = bed.containers()["hermes-api"]
    bed.edit("hermes-api/app/main.py", 'return {"status": "ok"}', 'return {"status": "ok", "boom": 1 / 0}')
    sha = bed.commit("hermes: a release whose /health crashes")
    answers = []

    def probe():
        try:
            answers.append(requests.get("http://127.0.0.1:28000/health", timeout=2).status_code)
        except requests.RequestException:
            answers.append(None)

    result = bed.materialize(selection="hermes_api")
    probe()
    assert not result.success
    failure = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"][0]
    assert "healthcheck" in failure.event_specific_data.error.message or \
        "not healthy" in failure.event_specific_data.error.message
    live = bed.containers()["hermes-api"]
    assert live.id == old.id and live.status == "running"
    assert live.labels["prodg.commit"] != sha
    assert answers == [200]
    # and no leftover candidate/previous containers
    names = [c.name for c in bed.client.containers.list(all=True, filters={"label": f"prodg.project={bed.project}"})]
    assert sorted(names) == sorted(f"{bed.project}-{s}" for s in SERVICES)
