"""A run container of docker/prod reaches the services it checks (#27 item 1): launched by the daemon on Dagster's own
network, before the mainframe's network even exists, it joins PRODG_PROBE_NETWORK when a check first asks where a
service answers, and reaches the service's container address there — what a loopback publication cannot give a
process in a container. Run in the production code image, with the Docker socket, as the run launcher starts it."""

from __future__ import annotations

import uuid

import pytest

from tests.prod.test_production import build_images

# building the images when they are missing takes minutes on 2 cores (as in test_production)
pytestmark = [pytest.mark.docker, pytest.mark.timeout(1800)]

PROBE = r"""
import socket, sys
from prodg_assets.desired.model import ServiceSpec
from prodg_assets.engine.client import DockerEngine

target, network = sys.argv[1], sys.argv[2]
spec = ServiceSpec(name="web", container_name=target, layer="observability", image="unused")
engine = DockerEngine(probe_network=network)
address = engine.client.api.inspect_container(target)["NetworkSettings"]["Networks"][network]["IPAddress"]

def reach(host, port):
    try:
        with socket.create_connection((host, port), timeout=3) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            return s.recv(64).split(b"\r\n")[0].decode()
    except OSError as exc:
        return f"unreachable ({type(exc).__name__})"

print("before:", reach(address, 8000))
print("endpoint:", engine.endpoint(spec, 8000) == (address, 8000))
print("after:", reach(address, 8000))
print("again:", engine.join_probe_network())
"""


def test_a_run_container_joins_the_probe_network_and_reaches_the_service(docker_client):
    image = build_images()["DAGSTER_CODE_IMAGE"]
    name = f"prodg-probe-{uuid.uuid4().hex[:8]}"
    network = docker_client.networks.create(f"{name}-internal", driver="bridge", labels={"prodg.test": name})
    made = []
    try:
        made.append(docker_client.containers.run(image, ["python3", "-m", "http.server", "8000"], detach=True,
                                                 name=f"{name}-web", network=network.name,
                                                 labels={"prodg.test": name}))
        run = docker_client.containers.run(image, ["python3", "-c", PROBE, f"{name}-web", network.name], detach=True,
                                           name=f"{name}-run", labels={"prodg.test": name},
                                           volumes={"/var/run/docker.sock": {"bind": "/var/run/docker.sock",
                                                                             "mode": "rw"}})
        made.append(run)
        status = run.wait(timeout=180)["StatusCode"]
        log = run.logs().decode()
        assert status == 0, log
        # from the default bridge the service's network is out of reach, until the check asks where it answers
        assert "before: unreachable" in log, log
        assert "endpoint: True" in log and "after: HTTP/1.0 200 OK" in log, log
        assert "again: already" in log, log
        run.reload()
        assert network.name in run.attrs["NetworkSettings"]["Networks"]
    finally:
        for container in made:
            container.remove(force=True)
        network.remove()
