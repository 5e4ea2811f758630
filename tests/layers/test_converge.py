"""The heart of the product, against the real Engine: materialising the layers brings the test stack up healthy,
re-applying changes nothing, one changed service is the only one recreated, and a failing image rolls back."""

from __future__ import annotations

import os
import re
import socket
import ssl
import subprocess
import threading
import time

import pytest
import requests

from tests.conftest import PRODG_CLI, ROOT, TEST_SECRETS, Testbed
from tests.reliability.test_engine_faults import redis_get, redis_write

pytestmark = pytest.mark.docker

SERVICES = {"postgres", "redis", "hermes-api", "caddy", "node-exporter", "prometheus"}


def check_results(result) -> dict[str, bool]:
    return {e.asset_check_evaluation_data.check_name: e.asset_check_evaluation_data.passed
            for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"}


def check_problems(result) -> dict[str, str]:
    """Failed checks → all their metadata as text (what an operator reads in the UI)."""
    return {e.asset_check_evaluation_data.check_name:
            " ".join(f"{k}: {getattr(v, 'value', v)}" for k, v in e.asset_check_evaluation_data.metadata.items())
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
    """The stack deployed from an empty Engine: the bed, the run's result and the containers it left."""
    result = testbed.materialize()
    return testbed, result, testbed.containers()


@pytest.fixture(autouse=True)
def at_baseline(deployed):
    """Each test starts from the stack as first deployed: whatever a test committed is put back and converged
    afterwards, so no test depends on another's commits or containers."""
    bed = deployed[0]
    yield
    if bed.reset_to(bed.commits[0]):
        assert bed.materialize().success


def test_empty_engine_to_healthy_stack_with_all_checks_green(deployed):
    bed, result, live = deployed
    assert result.success, check_problems(result)
    checks = check_results(result)
    assert checks and all(checks.values()), checks
    for name in ("host_conforms", "exposure", "network_matches", "secrets_complete_and_private",
                 "postgres_accepts_query", "redis_answers_ping", "prometheus_targets_up", "hermes_health_and_auth",
                 "certificates_valid"):
        assert checks.get(name) is True, f"{name}: {checks.get(name)}"
    assert set(live) == SERVICES
    for service, c in live.items():
        assert c.status == "running", service
        assert c.labels["prodg.commit"] == bed.commits[0]
    mats = materializations(result)
    for service in SERVICES:
        meta = mats[service.replace("-", "_")]
        assert meta["action"] == "created"
        assert meta["commit"] == bed.commits[0]
        assert meta["container_id"] == live[service].id
    # Hermes was built from the repo at the commit and tagged with it.
    assert f"prodg/hermes-api:{bed.commits[0][:12]}" in live["hermes-api"].image.tags


def test_test_stack_answers_on_its_real_protocols(deployed):
    bed = deployed[0]
    # Postgres accepts an authenticated query (through the real client, in the container).
    out = subprocess.run(["docker", "exec", "-e", f"PGPASSWORD={TEST_SECRETS['POSTGRES_PASSWORD']}",
                          f"{bed.project}-postgres", "psql", "-h", "127.0.0.1", "-U", "postgres", "-tAc",
                          "select 40 + 2"], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "42"
    # Redis answers PING with its password, and refuses without it.
    with socket.create_connection(("127.0.0.1", bed.published_port("redis", 6379)), timeout=5) as s:
        s.sendall(b"PING\r\n")
        assert s.recv(100).startswith(b"-NOAUTH")
    # Caddy serves HTTPS with its internal CA for the public domain, proxying Hermes.
    ctx = ssl.create_default_context(cafile=bed.env["PRODG_TLS_CA_FILE"])
    with socket.create_connection(("127.0.0.1", bed.published_port("caddy", 443)), timeout=5) as sock:
        with ctx.wrap_socket(sock, server_hostname="api.mainframe.prodg.studio") as tls:
            tls.sendall(b"GET /health HTTP/1.1\r\nHost: api.mainframe.prodg.studio\r\nConnection: close\r\n\r\n")
            reply = tls.recv(4096)
    assert reply.startswith(b"HTTP/1.1 200") and b'"ok"' in reply
    # Prometheus reports its targets, all up.
    deadline = time.time() + 30
    prometheus = f"http://127.0.0.1:{bed.published_port('prometheus', 9090)}"
    while True:
        targets = requests.get(f"{prometheus}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
        health = {t["labels"]["job"]: t["health"] for t in targets}
        if all(h == "up" for h in health.values()) or time.time() > deadline:
            break
        time.sleep(1)
    assert health == {"prometheus": "up", "caddy": "up", "node-exporter": "up", "hermes-api": "up"}
    # From an application container on the same network, Caddy's admin API does not answer (a `POST /load` there
    # would rewrite every site); its metrics listener does, and serves nothing else.
    probe = ("import socket, urllib.request, urllib.error\n"
             "try:\n    socket.create_connection(('caddy', 2019), timeout=3).close(); print('admin: open')\n"
             "except OSError as exc:\n    print('admin: closed', type(exc).__name__)\n"
             "print('metrics:', b'caddy_' in urllib.request.urlopen('http://caddy:2020/metrics', timeout=5).read())\n"
             "try:\n    urllib.request.urlopen('http://caddy:2020/config/', timeout=5); print('config: served')\n"
             "except urllib.error.HTTPError as exc:\n    print('config:', exc.code)\n")
    said = subprocess.run(["docker", "exec", f"{bed.project}-hermes-api", "python3", "-c", probe],
                          capture_output=True, text=True, timeout=60)
    assert said.stdout.splitlines() == ["admin: closed ConnectionRefusedError", "metrics: True", "config: 404"], \
        said.stdout + said.stderr


def test_second_apply_recreates_nothing(deployed):
    bed = deployed[0]
    before = {s: c.id for s, c in bed.containers().items()}
    result = bed.materialize()
    assert result.success
    assert {s: m["action"] for s, m in materializations(result).items() if s.replace("_", "-") in SERVICES} == \
        {s.replace("-", "_"): "unchanged" for s in SERVICES}
    assert {s: c.id for s, c in bed.containers().items()} == before


def test_changing_one_services_environment_recreates_only_that_container(deployed):
    bed = deployed[0]
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


@pytest.mark.fault(
    fault="new container fails its healthcheck",
    happens="trial container removed, the serving one never stopped (every probe answered), asset fails with the "
            "reason and the last log lines")
def test_failing_healthcheck_rolls_back_and_service_keeps_answering(deployed, measured):
    bed = deployed[0]
    old = bed.containers()["hermes-api"]
    bed.edit("hermes-api/app/main.py", 'return {"status": "ok"}', 'return {"status": "ok", "boom": 1 / 0}')
    sha = bed.commit("hermes: a release whose /health crashes")
    answers: list = []
    stop = threading.Event()
    health = f"http://127.0.0.1:{bed.published_port('hermes-api', 8000)}/health"  # the serving container's

    def probe():
        while not stop.is_set():
            try:
                answers.append(requests.get(health, timeout=2).status_code)
            except requests.RequestException as exc:
                answers.append(type(exc).__name__)
            time.sleep(0.2)

    poller = threading.Thread(target=probe)
    poller.start()
    try:
        result = bed.materialize(selection="hermes_api")
    finally:
        time.sleep(0.5)
        stop.set()
        poller.join()
    assert not result.success
    failure = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"][0]
    assert "failed its healthcheck" in failure.event_specific_data.error.message
    live = bed.containers()["hermes-api"]
    assert live.id == old.id and live.status == "running"
    assert live.labels["prodg.commit"] != sha
    # The service answered during the failed deploy and after it: every probe got 200.
    assert len(answers) > 10 and set(answers) == {200}, answers
    bed.edit("hermes-api/app/main.py", 'return {"status": "ok", "boom": 1 / 0}', 'return {"status": "ok"}')
    bed.commit("Revert the crashing hermes release")
    # and no leftover candidate/previous containers
    names = [c.name for c in bed.client.containers.list(all=True, filters={"label": f"prodg.project={bed.project}"})]
    assert sorted(names) == sorted(f"{bed.project}-{s}" for s in SERVICES)
    # the fault removed (the release reverted): the same apply again converges (in sync, running, serving)
    retry = bed.materialize(selection="hermes_api")
    live = bed.containers()["hermes-api"]
    converged = (retry.success and check_results(retry).get("in_sync") is True and live.status == "running"
                 and requests.get(health, timeout=5).status_code == 200)
    assert measured.retried(converged=converged), (check_problems(retry), live.status)
    names = [c.name for c in bed.client.containers.list(all=True, filters={"label": f"prodg.project={bed.project}"})]
    assert sorted(names) == sorted(f"{bed.project}-{s}" for s in SERVICES)


def prodg(bed: Testbed, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*PRODG_CLI, *args], capture_output=True, text=True, env=bed.env, cwd=ROOT)


def plan_rows(output: str) -> dict[str, tuple[str, str]]:
    rows = {}
    for line in output.splitlines()[1:]:
        parts = line.split(None, 2)
        if len(parts) >= 2 and parts[1] in ("create", "recreate", "unchanged", "remove", "orphan"):
            rows[parts[0]] = (parts[1], parts[2] if len(parts) > 2 else "")
    return rows


def test_plan_shows_exactly_the_drift_made_by_hand(deployed):
    bed = deployed[0]
    clean = prodg(bed, "plan")
    assert clean.returncode == 0, clean.stderr
    assert {s: a for s, (a, _) in plan_rows(clean.stdout).items()} == {s: "unchanged" for s in SERVICES}
    before = {s: c.id for s, c in bed.containers().items()}
    subprocess.run(["docker", "update", "--restart=no", f"{bed.project}-redis"], check=True, capture_output=True)
    drifted = prodg(bed, "plan")
    rows = plan_rows(drifted.stdout)
    assert rows["redis"][0] == "recreate"
    assert "restart: no -> unless-stopped" in rows["redis"][1]
    assert {s: a for s, (a, _) in rows.items() if s != "redis"} == {s: "unchanged" for s in SERVICES - {"redis"}}
    assert "nothing was applied" in drifted.stdout
    assert {s: c.id for s, c in bed.containers().items()} == before  # plan changed nothing
    # the secret values never show in a plan
    assert not any(v in drifted.stdout + drifted.stderr for v in TEST_SECRETS.values())
    healed = bed.materialize(selection="redis")
    assert healed.success
    assert materializations(healed)["redis"]["action"] == "recreated"
    assert bed.containers()["redis"].attrs["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"


def test_dry_run_records_the_plan_and_changes_nothing(deployed):
    bed = deployed[0]
    before = {s: c.id for s, c in bed.containers().items()}
    bed.edit("compose/docker-compose.yml", "    x-prodg: {layer: observability, internal_ports: [9100]}",
             "    command: [--collector.disable-defaults, --collector.cpu, --web.listen-address=:9100]\n"
             "    x-prodg: {layer: observability, internal_ports: [9100]}")
    bed.commit("node-exporter: fewer collectors")
    result = bed.materialize(selection="node_exporter",
                             run_config={"ops": {"node_exporter": {"config": {"dry_run": True}}}})
    assert result.success
    meta = materializations(result)["node_exporter"]
    assert meta["action"] == "planned:recreate" and meta["dry_run"] is True
    assert "command" in meta["plan"]
    assert {s: c.id for s, c in bed.containers().items()} == before


def test_a_wildcard_publication_is_refused_in_git_and_one_made_by_hand_is_red_after_the_next_deploy(deployed):
    bed = deployed[0]
    before = bed.containers()["node-exporter"].id
    # in git: a located validation error, and a run of that commit changes nothing live
    bed.edit("compose/docker-compose.yml", "    x-prodg: {layer: observability, internal_ports: [9100]}",
             "    ports: [\"0.0.0.0:9100:9100\"]\n    x-prodg: {layer: observability, internal_ports: [9100]}")
    bed.commit("node-exporter: published on every address (wrong)")
    refused = prodg(bed, "validate", os.path.join(bed.repo, "config"))
    assert refused.returncode != 0
    assert re.search(r"docker-compose\.yml:\d+: services\.node-exporter\.ports\[0\]: 9100/tcp is published on every "
                     r"address \(0\.0\.0\.0\) but is not public", refused.stdout + refused.stderr), refused.stdout
    assert not bed.materialize(selection="node_exporter").success
    assert bed.containers()["node-exporter"].id == before
    bed.reset_to(bed.commits[0])
    # by hand (a `docker run` into the project, on a port the Engine picks): the exposure check that runs with the
    # next deploy of any service names it, with the port it really got
    image = bed.containers()["node-exporter"].image.id
    by_hand = bed.client.containers.run(image, detach=True, name=f"{bed.project}-by-hand",
                                        ports={"9100/tcp": ("0.0.0.0", None)},
                                        labels={"prodg.project": bed.project, "prodg.service": "by-hand"})
    try:
        by_hand.reload()
        port = by_hand.attrs["NetworkSettings"]["Ports"]["9100/tcp"][0]["HostPort"]
        deploy = bed.materialize(selection="node_exporter")
        assert deploy.success and check_results(deploy)["exposure"] is False
        assert f"{bed.project}-by-hand: {port}/tcp on 0.0.0.0" in check_problems(deploy)["exposure"]
    finally:
        by_hand.remove(force=True)
    assert check_results(bed.materialize(selection="node_exporter"))["exposure"] is True


def test_a_service_that_left_the_spec_is_reported_then_pruned_when_opted_in(deployed):
    bed = deployed[0]
    bed.edit("compose/docker-compose.yml",
             "    x-prodg: {layer: observability, after: [caddy, node-exporter, hermes-api]}",
             "    x-prodg: {layer: observability, after: [caddy, hermes-api]}")
    text = open(bed.compose).read()
    start = text.index("  node-exporter:\n")
    end = text.index("  prometheus:\n")
    with open(bed.compose, "w") as fh:
        fh.write(text[:start] + text[end:])
    bed.commit("retire node-exporter")
    reported = bed.materialize(selection="retired_services")
    assert materializations(reported)["retired_services"]["retired"] == "node-exporter"
    assert check_results(reported)["no_retired_services"] is False
    assert "node-exporter" in bed.containers()
    bed.edit("prodg.yaml", "  stop_timeout_s: 5\n", "  stop_timeout_s: 5\n  prune: true\n")
    bed.commit("opt in to pruning")
    pruned = bed.materialize(selection="retired_services")
    assert materializations(pruned)["retired_services"]["removed"] == "node-exporter"
    assert check_results(pruned)["no_retired_services"] is True
    assert "node-exporter" not in bed.containers()


@pytest.mark.fault(
    fault="image build fails (`RUN exit 3`)",
    happens="asset fails naming the build; the running container untouched; a retry after the fix converges")
def test_an_image_that_does_not_build_fails_the_asset_and_changes_nothing(deployed, measured):
    bed = deployed[0]
    before = bed.containers()["hermes-api"]
    bed.edit("hermes-api/Dockerfile", "COPY app /app", "COPY app /app\nRUN exit 3")
    bed.commit("hermes: a Dockerfile that cannot build")
    result = bed.materialize(selection="hermes_api")
    assert not result.success
    failure = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"][0]
    assert "image build from hermes-api failed" in failure.event_specific_data.error.message
    after = bed.containers()["hermes-api"]
    assert after.id == before.id and after.status == "running"
    bed.edit("hermes-api/Dockerfile", "COPY app /app\nRUN exit 3", "COPY app /app")
    bed.commit("hermes: Dockerfile fixed")
    retry = bed.materialize(selection="hermes_api")  # a retry after the fix converges
    assert measured.retried(converged=retry.success and check_results(retry).get("in_sync") is True
                            and bed.containers()["hermes-api"].status == "running"), check_problems(retry)


@pytest.mark.fault(
    fault="new (stateful) container killed during its health wait",
    happens="new one removed, previous one renamed back and restarted; a retry converges")
def test_a_new_container_killed_during_its_health_wait_rolls_back(deployed, measured):
    bed = deployed[0]
    written = redis_write(bed)  # what Redis holds before the fault
    old = bed.containers()["redis"]
    bed.edit("compose/docker-compose.yml", "      REDIS_PASSWORD: ${REDIS_PASSWORD}\n",
             "      REDIS_PASSWORD: ${REDIS_PASSWORD}\n      REDIS_MAXCLIENTS: \"400\"\n")
    bed.edit("compose/docker-compose.yml",
             "      interval: 1s\n      timeout: 5s\n      retries: 30\n    x-prodg: {layer: data_stores}",
             "      interval: 1s\n      timeout: 5s\n      retries: 30\n      start_period: 30s\n"
             "    x-prodg: {layer: data_stores}")
    bed.commit("redis: fewer clients, slower first check")
    killed: list[str] = []

    def killer():
        deadline = time.time() + 60
        while time.time() < deadline and not killed:
            for c in bed.client.containers.list(filters={"label": f"prodg.project={bed.project}"}):
                if c.labels.get("prodg.service") == "redis" and c.id != old.id:
                    c.kill()
                    killed.append(c.id)
                    return
            time.sleep(0.1)

    thread = threading.Thread(target=killer)
    thread.start()
    result = bed.materialize(selection="redis")
    thread.join()
    assert killed and not result.success
    failure = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"][0]
    assert "exited" in failure.event_specific_data.error.message
    restored = bed.containers()["redis"]
    assert restored.id == old.id and restored.status == "running"
    assert restored.name == f"{bed.project}-redis"
    # the retry converges
    retry = bed.materialize(selection="redis")
    assert measured.retried(converged=retry.success), check_problems(retry)
    assert bed.containers()["redis"].labels["prodg.commit"] == bed.commits[-1]
    # and Redis still holds what it held before the fault
    read = {key: value for key in written if (value := redis_get(bed, key)) is not None}
    assert measured.compare("keys", expected=written, actual=read) == 0, read
