"""The README's main command as a newcomer runs it: `bash docker/dev/up` in a fresh clone of this repository, on this
machine's Engine. It installs, starts its own image registry and backup store, and Dagster's sensor deploys the
bundled config/ at the clone's commit. Then, as a person would see it — through the webserver's GraphQL and a
screenshot of the UI — every service this machine can run is materialised with that commit and healthy in `docker ps`,
the host check is red saying why, each service without a runnable image failed naming the image and the registry,
and Ctrl-C stops every process `up` started.

The bundled config names fixed containers (caddy, postgres, …) and host ports (80, 443, 5432, …): one run of this
test at a time on an Engine, behind a host-wide lock, and never over containers it did not make."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess

import pytest
import requests

import docker
from prodg_assets.contract import HOST_CONFORMS, SENSOR_NAME
from prodg_assets.desired import DirTree, load_desired_state
from tests.browser import look
from tests.conftest import ROOT, engine_lock, free_subnet, git
from tests.dagster_dev import Dagster
from tests.spec.conftest import BUNDLED_ENV
from tests.standins.process import free_port

pytestmark = [pytest.mark.docker, pytest.mark.timeout(2400)]

# every run of this test on the Engine, whichever clone, machine or container it runs from: the bundled config's
# container names are fixed
LOCK = "prodg-lock-bundled-config"
SEED_NAMES = os.path.join(ROOT, "docker", "images", "seed-names")
TERMINAL = {"SUCCESS", "FAILURE", "CANCELED"}


def stand_in_images() -> set[str]:
    """The seed's images docker/dev/up pushes into its registry (docker/images/seed-names' second column)."""
    with open(SEED_NAMES, encoding="utf-8") as fh:
        return {line.split()[1] for line in fh if line.strip() and not line.startswith("#")}


def answers(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def clean_engine(client: docker.DockerClient, names: list[str], networks: list[str]) -> None:
    for name in names:
        try:
            client.containers.get(name).remove(force=True, v=True)
        except docker.errors.NotFound:
            pass
    for name in networks:  # what is still attached (a container a late run made again) goes with its network
        try:
            network = client.networks.get(name)
            network.reload()
            for container_id in (network.attrs.get("Containers") or {}):
                try:  # one that goes away meanwhile (its own run removed it) is gone already
                    client.api.remove_container(container_id, force=True, v=True)
                except docker.errors.NotFound:
                    pass
            network.remove()
        except docker.errors.NotFound:
            pass


def test_the_readme_main_command_on_a_fresh_clone_deploys_what_this_machine_can_run(tmp_path, docker_client):
    client = docker_client
    with engine_lock(client, LOCK):  # another run's test waits here until that one has cleaned up
        clone = str(tmp_path / "prodg")
        subprocess.run(["git", "clone", "-q", ROOT, clone], check=True)
        commit = git(clone, "rev-parse", "HEAD")
        # s3s-fs is built from crates.io by install.sh (about 3.5 minutes); the clone gets this checkout's build
        # when there is one, the rest of the install runs as written.
        built = os.path.join(ROOT, ".prodg", "tools", "bin", "s3s-fs")
        if os.access(built, os.X_OK):
            os.makedirs(os.path.join(clone, ".prodg", "tools", "bin"))
            shutil.copy2(built, os.path.join(clone, ".prodg", "tools", "bin", "s3s-fs"))

        subnet = free_subnet(client)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PRODG_", "DAGSTER_", "BACKUP_", "B2_", "PYTEST_", "VIRTUAL_ENV"))}
        ports = {"DAGSTER_PORT": free_port(), "PRODG_WEBHOOK_PORT": free_port(), "PRODG_BACKUP_STORE_PORT": free_port()}
        env.update({k: str(v) for k, v in ports.items()})
        env.update({"PRODG_NETWORK_SUBNET": subnet, "PRODG_SENSOR_INTERVAL_S": "10"})
        state = load_desired_state(DirTree(os.path.join(clone, "config")), {**env, "PRODG_DATA": "/x", **BUNDLED_ENV,
                                                                              "PRODG_SECRETS_FILE": "/x/.env"})
        containers = [s.container_name for s in state.services.values()] + ["dagster-postgres"]
        networks = [n.name for n in state.networks.values() if not n.external] + ["prodg-dagster"]
        present = [c.name for c in client.containers.list(all=True, ignore_removed=True) if c.name in containers]
        present += [n.name for n in client.networks.list() if n.name in networks]
        assert not present, (f"containers or networks of the bundled config already exist on this Engine: {present} "
                             f"(an operator's `docker/dev/up`?); this test does not touch them")
        runnable, unrunnable = [], []
        local = {img for img in {s.image for s in state.services.values()} if _local(client, img)}
        for spec in state.services.values():
            (runnable if spec.build or spec.image in stand_in_images() or spec.image in local
             else unrunnable).append(spec)
        assert {"caddy", "postgres", "redis", "prometheus", "node-exporter", "hermes-api"} <= \
            {s.name for s in runnable}

        log_path = str(tmp_path / "up.log")
        with open(log_path, "w") as log:
            up = subprocess.Popen(["bash", "docker/dev/up"], cwd=clone, env=env, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{ports['DAGSTER_PORT']}"
        dagster = Dagster(url, log_path)
        registry_port = None
        try:
            def ui_up() -> bool:
                if up.poll() is not None:  # not an AssertionError: wait() would keep polling a dead script
                    raise RuntimeError(f"docker/dev/up exited with {up.returncode}:\n{open(log_path).read()[-3000:]}")
                return requests.get(f"{url}/server_info", timeout=5).ok

            dagster.wait("the Dagster UI of docker/dev/up", ui_up, budget=1500)
            with open(os.path.join(clone, ".prodg", "registry", "port"), encoding="utf-8") as fh:
                registry_port = int(fh.read())
            keys = [{"path": [s.asset]} for s in runnable]

            def deployed() -> dict | None:
                runs = _sensor_runs(dagster, commit)
                if not runs or any(r["status"] not in TERMINAL for r in runs):
                    return None
                latest = _latest_materialisations(dagster, keys)
                return latest if all(m and m["commit"] == commit for m in latest.values()) else None

            # the assertion is the wait: every runnable service's latest materialisation carries the clone's commit
            # (the wait fails the test, saying what it waited for, when one never does)
            dagster.wait(f"the sensor's runs of {commit[:12]} to deploy {sorted(s.name for s in runnable)}",
                         deployed, budget=1500)

            # docker ps: each runnable service's container runs (healthy where it has a health check). A container
            # seen between its start and its first probe says `starting`: looked at again (a bound in attempts) until
            # its own healthcheck has answered; an unhealthy one fails, with its restart count.
            def container_state(spec):
                attrs = client.containers.get(spec.container_name).attrs
                return attrs["State"], attrs.get("RestartCount", 0)

            for spec in runnable:
                state_, restarts = container_state(spec)
                assert state_["Status"] == "running", (spec.name, state_, restarts)
                if spec.healthcheck:
                    health = dagster.wait(f"{spec.name}'s healthcheck to answer", lambda: (
                        h := container_state(spec)[0].get("Health", {})).get("Status") != "starting" and h, budget=120)
                    state_, restarts = container_state(spec)
                    assert health.get("Status") == "healthy", (spec.name, health, restarts)

            # nothing below T1 runs a process as root unless its config says why: Postgres as 70, Redis as 999,
            # Prometheus and node-exporter as nobody, in data folders prodg made for them
            below_t1 = [s for s in runnable if s.trust_tier != "T1" and not s.runs_as_root]
            assert {"postgres", "redis", "prometheus", "node-exporter"} <= {s.name for s in below_t1}
            uids = {s.name: {int(p[0]) for p in client.api.top(s.container_name, ps_args="-o uid,pid")["Processes"]}
                    for s in below_t1}
            assert {name: u for name, u in uids.items() if 0 in u} == {}, uids

            # what an application container on the mainframe's network reaches: the data stores and Caddy's sites,
            # never Dagster's GraphQL or gRPC (either launches runs as root with the Docker socket) nor Caddy's admin
            said = _reach_from(client, "hermes-api", {"postgres": 5432, "caddy": 80, "caddy-metrics": ("caddy", 2020),
                                                      "caddy-admin": ("caddy", 2019),
                                                      "dagster-webserver": 3000, "dagster-code": 4000})
            assert said["postgres"] == said["caddy"] == said["caddy-metrics"] == "open", said
            assert said["caddy-admin"] == "refused", said
            names = {s.name for s in runnable}
            for control_plane in ("dagster-webserver", "dagster-code"):
                if control_plane in names:
                    assert said[control_plane] == "no such host", said
            # ... while Caddy reaches the console it gates, over the network the two share alone
            if "dagster-webserver" in names:
                code, out = client.containers.get("caddy").exec_run(
                    ["wget", "-q", "-O", "-", "http://dagster-webserver:3000/server_info"])
                assert code == 0 and b"dagster_webserver_version" in out, out

            # the services without a runnable image failed, naming the image and the registry
            failures = _step_failures(dagster, commit)
            registry = f"127.0.0.1:{registry_port}"
            for spec in unrunnable:
                said = failures.get(spec.asset, "")
                assert f"image {spec.image} is not in the registry mirror {registry}" in said, (spec.name, said)

            # the host check is red, and says why (this is Debian, the config describes Ubuntu 24.04)
            check = _check(dagster, "host_baseline", HOST_CONFORMS)
            assert check["status"] == "FAILED", check
            entries = {e["label"]: e.get("text", e.get("mdStr")) for e in check["evaluation"]["metadataEntries"]}
            with open("/etc/os-release", encoding="utf-8") as fh:  # this machine's, as the check reads it
                pretty = next(line.split("=", 1)[1].strip().strip('"')
                              for line in fh if line.startswith("PRETTY_NAME="))
            assert entries["os"] == pretty, entries
            assert f"- OS is {pretty!r}, expected 'Ubuntu 24.04' (prodg.yaml host.os)" in entries["problems"], entries

            # the UI, as a person sees it: Postgres' asset page with its latest materialisation's commit
            dom, shot = look(f"{url}/assets/postgres", str(tmp_path / "chromium"), "first-run-postgres.png",
                             ready=lambda dom: commit in dom)
            assert commit in dom, f"{url}/assets/postgres does not show the commit {commit}; screenshot: {shot}"
            assert os.path.getsize(shot) > 10_000
        finally:
            if up.poll() is None:
                os.killpg(up.pid, signal.SIGINT)  # Ctrl-C: the terminal's foreground process group
                try:
                    up.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    os.killpg(up.pid, signal.SIGKILL)
                    up.wait()
            still = {name: port for name, port in {**ports, "registry": registry_port}.items()
                     if port and answers(port)}
            clean_engine(client, containers, networks)
        assert up.returncode == 130, f"docker/dev/up ended with {up.returncode}: see {log_path}"
        assert not still, f"after Ctrl-C these of up's servers still answer: {still}"


def _reach_from(client: docker.DockerClient, container: str, targets: dict) -> dict[str, str]:
    """{name: "open" | "refused" | "no such host" | "timeout"} of a TCP connection to each target (a port on the
    host of that name, or (host, port)), tried from inside `container` (an image with python3)."""
    pairs = {name: t if isinstance(t, tuple) else (name, t) for name, t in targets.items()}
    probe = ("import json, socket, sys\nout = {}\n"
             "for name, (host, port) in json.loads(sys.argv[1]).items():\n"
             "    try:\n        socket.create_connection((host, port), timeout=5).close(); out[name] = 'open'\n"
             "    except socket.gaierror:\n        out[name] = 'no such host'\n"
             "    except ConnectionRefusedError:\n        out[name] = 'refused'\n"
             "    except OSError:\n        out[name] = 'timeout'\n"
             "print(json.dumps(out))\n")
    code, out = client.containers.get(container).exec_run(["python3", "-c", probe, json.dumps(pairs)])
    assert code == 0, out.decode()
    return json.loads(out.decode().strip().splitlines()[-1])


def _local(client: docker.DockerClient, image: str) -> bool:
    try:
        client.images.get(image)
        return True
    except docker.errors.ImageNotFound:
        return False


def _sensor_runs(dagster: Dagster, commit: str) -> list[dict]:
    data = dagster.gql("""query($tags: [ExecutionTag!]) { runsOrError(filter: {tags: $tags}) { __typename
          ... on Runs { results { runId status } } } }""",
                       tags=[{"key": "prodg/commit", "value": commit},
                             {"key": "dagster/sensor_name", "value": SENSOR_NAME}])
    return data["runsOrError"]["results"]


def _latest_materialisations(dagster: Dagster, keys: list[dict]) -> dict[str, dict | None]:
    data = dagster.gql("""query($keys: [AssetKeyInput!]) { assetNodes(assetKeys: $keys) { assetKey { path }
          assetMaterializations(limit: 1) { runId metadataEntries { label
            ... on TextMetadataEntry { text } } } } }""", keys=keys)
    latest = {}
    for node in data["assetNodes"]:
        events = node["assetMaterializations"]
        meta = {e["label"]: e.get("text") for e in events[0]["metadataEntries"]} if events else {}
        latest["/".join(node["assetKey"]["path"])] = {"run": events[0]["runId"], "commit": meta.get("commit")} \
            if events else None
    return latest


def _step_failures(dagster: Dagster, commit: str) -> dict[str, str]:
    """asset (= step key) → the error messages of its failed steps, over the sensor's runs of `commit`."""
    said: dict[str, str] = {}
    for run in _sensor_runs(dagster, commit):
        data = dagster.gql("""query($id: ID!) { logsForRun(runId: $id, limit: 100000) { __typename
              ... on EventConnection { events { __typename ... on ExecutionStepFailureEvent { stepKey
                error { message causes { message } } } } } } }""", id=run["runId"])
        for event in data["logsForRun"].get("events") or []:
            if event["__typename"] == "ExecutionStepFailureEvent":
                error = event["error"]
                text = "\n".join([error["message"], *(c["message"] for c in error.get("causes") or [])])
                said[event["stepKey"]] = said.get(event["stepKey"], "") + text
    return said


def _check(dagster: Dagster, asset: str, name: str) -> dict:
    data = dagster.gql("""query($key: AssetKeyInput!, $name: String!) { assetCheckExecutions(assetKey: $key,
          checkName: $name, limit: 1) { status evaluation { description metadataEntries { label
            ... on TextMetadataEntry { text } ... on MarkdownMetadataEntry { mdStr } } } } }""",
                       key={"path": [asset]}, name=name)
    executions = data["assetCheckExecutions"]
    assert executions, f"no execution of the check {name} on {asset}"
    return executions[0]
