"""The Docker Engine's socket disappears in the middle of an apply (prodg reaches the Engine through a unix-socket
proxy that is cut at a chosen step): the asset fails saying the Engine cannot be reached, the serving container of a
stateless service is never touched, Redis's data survives, and once the socket is back a plain retry converges —
one container per service, on the new config, nothing left over."""

import os
import socket
import threading
import time

import pytest

from prodg_assets.engine import client as engine_client
from tests.conftest import TEST_SECRETS
from tests.standins.socketproxy import EngineSocketProxy

pytestmark = pytest.mark.docker

CONTAINER_START = rb"^POST /v[\d.]+/containers/[0-9a-f]{12,64}/start "


def redis_cmd(bed, *args: str) -> str:
    """The raw reply to one command sent to the test bed's Redis on loopback, after AUTH (RESP, no client library):
    a status/error/integer line, or a bulk string's header line and body."""
    def enc(parts):
        return b"".join([f"*{len(parts)}\r\n".encode()] + [f"${len(p.encode())}\r\n{p}\r\n".encode() for p in parts])

    with socket.create_connection(("127.0.0.1", bed.published_port("redis", 6379)), timeout=5) as s:
        reader = s.makefile("rb")
        s.sendall(enc(["AUTH", TEST_SECRETS["REDIS_PASSWORD"]]))
        assert reader.readline().startswith(b"+OK")
        s.sendall(enc(list(args)))
        line = reader.readline()
        if line.startswith(b"$") and not line.startswith(b"$-1"):
            line += reader.read(int(line[1:]) + 2)
        return line.decode()


def redis_get(bed, key: str) -> str | None:
    """The value of `key` in the test bed's Redis, or None when it has none."""
    reply = redis_cmd(bed, "GET", key)
    return None if not reply.startswith("$") or reply.startswith("$-1") else reply.split("\r\n")[1]


def redis_write(bed, n: int = 100) -> dict[str, str]:
    """`n` keys written to the test bed's Redis (and `prodg:fault` = kept): what it holds before a fault."""
    written = {"prodg:fault": "kept", **{f"prodg:fault:{i}": f"value-{i}-{i * i}" for i in range(n)}}
    for key, value in written.items():
        assert redis_cmd(bed, "SET", key, value).startswith("+OK")
    return written


def managed(bed, service: str) -> list:
    return [c for c in bed.client.containers.list(all=True, filters={"label": f"prodg.project={bed.project}"})
            if c.labels.get("prodg.service") == service]


@pytest.fixture(scope="module")
def deployed(testbed):
    assert testbed.materialize().success
    return testbed


@pytest.fixture()
def proxy(tmp_path):
    with EngineSocketProxy(str(tmp_path / "docker.sock")) as p:
        old = os.environ.get("DOCKER_HOST")
        os.environ["DOCKER_HOST"] = p.url
        try:
            yield p
        finally:
            engine_client._CLIENTS.pop(p.url, None)
            if old is None:
                os.environ.pop("DOCKER_HOST", None)
            else:
                os.environ["DOCKER_HOST"] = old


def failure_text(result) -> str:
    return "\n".join(str(e.step_failure_data.error.message if e.step_failure_data.error else "") +
                     str(e.step_failure_data.user_failure_data.description
                         if e.step_failure_data.user_failure_data else "")
                     for e in result.all_events if e.is_step_failure)


@pytest.mark.fault(
    fault="Engine socket gone while a stateful container is swapped (after the old Redis stopped and the new one "
          "started)",
    happens='asset fails: "the Docker Engine at unix://… cannot be reached …; the next apply … restores or replaces '
            'it"; once the socket is back the retry keeps the healthy new container, removes the kept previous one, '
            "in_sync passes, Redis's data is intact")
def test_engine_socket_gone_while_a_stateful_container_is_swapped(deployed, proxy, measured):
    bed = deployed
    written = redis_write(bed)  # what Redis holds before the fault
    old_id = bed.containers()["redis"].id
    bed.edit("compose/docker-compose.yml", "      REDIS_PASSWORD: ${REDIS_PASSWORD}\n",
             "      REDIS_PASSWORD: ${REDIS_PASSWORD}\n      FAULT_ROUND: \"socket\"\n")
    bed.commit("redis: a change applied while the Engine goes away")

    proxy.arm_cut(CONTAINER_START, after_s=0.5)  # the new Redis has been started; its health wait is under way
    failed = bed.materialize(selection="redis")
    assert proxy.cuts == 1, proxy.requests[-10:]
    assert not failed.success
    text = failure_text(failed)
    assert f"the Docker Engine at {proxy.url} cannot be reached" in text, text
    assert "next apply" in text, text
    # it was cut mid-apply for real: the previous container had been stopped, the new one started
    stops = [r for r in proxy.requests if r.startswith(b"POST") and b"/stop" in r]
    assert any(old_id[:12].encode() in r for r in stops), proxy.requests

    proxy.restore()
    healed = bed.materialize(selection="redis")
    assert measured.retried(converged=healed.success), failure_text(healed)
    containers = managed(bed, "redis")
    assert [c.name for c in containers] == [f"{bed.project}-redis"], [c.name for c in containers]
    live = containers[0]
    assert live.id != old_id and live.status == "running"
    assert "FAULT_ROUND=socket" in live.attrs["Config"]["Env"]
    read = {key: value for key in written if (value := redis_get(bed, key)) is not None}
    assert measured.compare("keys", expected=written, actual=read) == 0, read
    assert redis_cmd(bed, "GET", "prodg:fault") == "$4\r\nkept\r\n", "Redis lost its data"
    checks = {e.asset_check_key.name: e.passed for e in healed.get_asset_check_evaluations()}
    assert checks.get("in_sync") is True, checks


@pytest.mark.fault(
    fault="Engine socket gone while a stateless release proves itself (trial container)",
    happens="asset fails naming the Engine; the serving container is never touched (every probe answered, 0 "
            "restarts); the retry removes the stray trial container and converges")
def test_engine_socket_gone_during_a_stateless_trial_keeps_the_service_serving(deployed, proxy, measured):
    import urllib.request

    bed = deployed
    serving = bed.containers()["hermes-api"]
    health = f"http://127.0.0.1:{bed.published_port('hermes-api', 8000)}/health"
    answered, failed_probes, stop = [], [], threading.Event()

    def probe():
        while not stop.is_set():
            try:
                with urllib.request.urlopen(health, timeout=2) as resp:
                    answered.append(resp.status)
            except Exception as exc:  # noqa: BLE001 — any failed probe is counted
                failed_probes.append(repr(exc))
            time.sleep(0.1)

    bed.edit("compose/docker-compose.yml", "      HERMES_API_TOKEN: ${HERMES_API_TOKEN}\n",
             "      HERMES_API_TOKEN: ${HERMES_API_TOKEN}\n      FAULT_ROUND: \"socket\"\n")
    bed.commit("hermes: a change applied while the Engine goes away")
    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    try:
        proxy.arm_cut(CONTAINER_START, after_s=0.5)  # the trial container has been started
        failed = bed.materialize(selection="hermes_api")
    finally:
        stop.set()
        prober.join(5)
    assert proxy.cuts == 1
    assert not failed.success
    text = failure_text(failed)
    assert f"the Docker Engine at {proxy.url} cannot be reached" in text, text
    assert "while the trial container was proving itself" in text, text
    assert "kept serving throughout" in text, text
    assert answered and not failed_probes, failed_probes[:5]  # every probe during the failed apply answered
    serving.reload()
    assert serving.status == "running" and serving.attrs["RestartCount"] == 0

    proxy.restore()
    healed = bed.materialize(selection="hermes_api")
    assert measured.retried(converged=healed.success), failure_text(healed)
    containers = managed(bed, "hermes-api")
    assert [c.name for c in containers] == [f"{bed.project}-hermes-api"], [c.name for c in containers]
    assert "FAULT_ROUND=socket" in containers[0].attrs["Config"]["Env"]
