"""The production shape (docker/prod) on this machine's Engine: the images built offline by docker/prod/build.sh, and
the containers of docker/prod/docker-compose.yml — Dagster's Postgres, the code location, the webserver, the
daemon — started through the Docker SDK exactly as the Compose file declares them (compose itself may be absent),
on a private network, serving a real git config repo (the test stack). Then, over the webserver's GraphQL API and in its
UI: a materialisation runs in a container of its own (DockerRunLauncher) and leaves its events in Postgres; a push
to the config repo is picked up by the daemon's sensor tick and deployed; a run whose container dies is marked
failed; the upgrade and backup commands of docs/PRODUCTION.md work; the asset graph shows the layer groups."""

from __future__ import annotations

import datetime
import json
import os
import re
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

import dagster as dg
import pytest
import requests
import yaml

import docker
import prodg_assets
from prodg_assets.desired import LAYERS, DirTree, load_desired_state
from prodg_assets.gitops.impact import impacted_assets
from tests.browser import look, shown
from tests.conftest import ROOT, Testbed, age_keygen, make_testbed

# The first test's setup builds the images when they are missing (about 4 minutes on 2 cores), hence the timeout.
pytestmark = [pytest.mark.docker, pytest.mark.timeout(1800)]

PROD = os.path.join(ROOT, "docker", "prod")
COMPOSE_FILE = os.path.join(PROD, "docker-compose.yml")
PROD_ROOT = "/opt/prodg"  # the Compose file's root for repo, data and deployed tree; the test's tmp folder here
LOCATION = "prodg"
REPOSITORY = "__repository__"
SENSOR = "config_repo_sensor"
TEST_LABEL = "prodg.prod-test"
SERVICE_KEYS = {"image", "container_name", "restart", "command", "environment", "volumes", "networks", "ports",
                "healthcheck", "depends_on"}
TERMINAL = {"SUCCESS", "FAILURE", "CANCELED"}


def wait_for(what: str, probe: Callable[[], Any], timeout: float, interval: float = 1.0,
             diagnose: Callable[[], str] = lambda: "") -> Any:
    """probe() until it returns something truthy; fails with `what` (and diagnose()) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            result = probe()
            if result:
                return result
        except (requests.RequestException, docker.errors.APIError, KeyError) as exc:
            last_error = exc
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}"
                f"{f' (last error: {last_error})' if last_error else ''}\n{diagnose()}")


# --- the Compose file, read the way `docker compose` reads it (the subset it uses) ---------------------------------

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def interpolate(node: Any, env: dict[str, str]) -> Any:
    """Compose's ${NAME}, ${NAME:-default}, ${NAME:?error} in every string of the document."""
    if isinstance(node, dict):
        return {k: interpolate(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v, env) for v in node]
    if not isinstance(node, str):
        return node

    def sub(m: re.Match) -> str:
        name, op, arg = m.groups()
        value = env.get(name)
        if op == ":-":
            return value or arg
        if op == "-":
            return arg if value is None else value
        assert value, f"{COMPOSE_FILE}: ${{{name}}} is required{f' ({arg})' if arg else ''}"
        return value

    return _VAR.sub(sub, node)


def duration_ns(text: str) -> int:
    m = re.fullmatch(r"(\d+)(ms|s|m)", str(text))
    assert m, f"unsupported duration {text!r}"
    return int(m.group(1)) * {"ms": 10**6, "s": 10**9, "m": 60 * 10**9}[m.group(2)]


@dataclass
class Deployment:
    """docker/prod's containers for one test: unique names, a private network (service names as aliases, as compose
    gives them), the Compose file's /opt/prodg replaced by the test's own folder, mounted at the same path."""

    __test__ = False

    client: docker.DockerClient
    bed: Testbed
    root: str
    name: str
    images: dict[str, str]
    compose: dict = field(default_factory=dict)
    containers: dict[str, Any] = field(default_factory=dict)
    network: str = ""
    volume: str = ""
    url: str = ""

    def __post_init__(self) -> None:
        self.network = f"{self.name}-dagster"
        self.volume = f"{self.name}-dagster-storage"
        env = {**self.images, "DAGSTER_POSTGRES_PASSWORD": f"pg-{self.name}-{os.urandom(6).hex()}",
               "PRODG_SENSOR_INTERVAL_S": "5"}
        with open(COMPOSE_FILE, encoding="utf-8") as fh:
            self.compose = interpolate(yaml.safe_load(fh), env)

    # What only a test needs on top of the Compose file: the test stack's prodg.yaml variables (its data folder,
    # secrets file, project name, CA) for the code server and, through its container context, for every run
    # container, whose mounts are the test folder instead of /opt/prodg.
    def extra_env(self, service: str) -> dict[str, str]:
        if service != "dagster-code":
            return {}
        prodg_vars = {k: self.bed.env[k] for k in ("PRODG_DATA", "PRODG_SECRETS_FILE", "PRODG_TEST_NAME",
                                                     "PRODG_TLS_CA_FILE", "PRODG_REGISTRY_MIRROR")}
        context = {"docker": {
            "env_vars": [f"{k}={v}" for k, v in prodg_vars.items()],
            "container_kwargs": {
                "volumes": ["/var/run/docker.sock:/var/run/docker.sock", f"{self.root}:{self.root}",
                            f"{self.volume}:/opt/dagster/storage"],
                "labels": {TEST_LABEL: self.name},
            },
        }}
        return {**prodg_vars, "DAGSTER_CONTAINER_CONTEXT": json.dumps(context)}

    def host_path(self, path: str) -> str:
        return self.root + path[len(PROD_ROOT):] if path == PROD_ROOT or path.startswith(PROD_ROOT + "/") else path

    def container_args(self, service: str) -> dict:
        svc = self.compose["services"][service]
        unknown = set(svc) - SERVICE_KEYS
        assert not unknown, f"{COMPOSE_FILE}: services.{service}: the test does not mirror {sorted(unknown)}"
        env = {k: self.host_path(str(v)) for k, v in (svc.get("environment") or {}).items()}
        if "DAGSTER_DOCKER_NETWORK" in env:
            assert env["DAGSTER_DOCKER_NETWORK"] == self.compose["networks"]["dagster"]["name"]
            env["DAGSTER_DOCKER_NETWORK"] = self.network
        env.update(self.extra_env(service))
        volumes = []
        for spec in svc.get("volumes") or []:
            src, dst, *mode = spec.split(":")
            if not src.startswith("/"):
                assert src in self.compose["volumes"], f"services.{service}.volumes: unknown volume {src}"
                src = self.volume
            volumes.append(":".join([self.host_path(src), self.host_path(dst), *mode]))  # same path inside
        ports = {}
        for spec in svc.get("ports") or []:
            host_ip, _host_port, container_port = spec.rsplit(":", 2)
            assert host_ip == "127.0.0.1", f"services.{service}.ports: {spec} is not loopback-only"
            ports[f"{container_port}/tcp"] = (host_ip, None)  # a free port, chosen by the Engine
        health = svc.get("healthcheck")
        healthcheck = None if not health else {
            "test": health["test"], "interval": duration_ns(health.get("interval", "30s")),
            "timeout": duration_ns(health.get("timeout", "30s")), "retries": int(health.get("retries", 3))}
        assert svc.get("networks") == ["dagster"], f"services.{service}.networks"
        return dict(image=svc["image"], name=f"{self.name}-{service}", command=svc.get("command"),
                    environment=env, volumes=volumes, ports=ports, healthcheck=healthcheck,
                    restart_policy={"Name": svc["restart"]} if svc.get("restart") else None,
                    labels={TEST_LABEL: self.name}, detach=True)

    def start(self, service: str, timeout: float = 180) -> None:
        """Creates and starts one service once the services it depends on are in the state compose waits for."""
        svc = self.compose["services"][service]
        for dep, cond in (svc.get("depends_on") or {}).items():
            if cond.get("condition") == "service_healthy":
                self.wait_healthy(dep, timeout)
            else:
                assert dep in self.containers, f"{service} depends on {dep}, not started"
        args = self.container_args(service)
        container = self.client.containers.create(**args)
        self.client.networks.get(self.network).connect(container, aliases=[service])
        container.start()
        self.containers[service] = container

    def wait_healthy(self, service: str, timeout: float) -> None:
        container = self.containers[service]

        def healthy() -> bool:
            container.reload()
            assert container.status in ("created", "running"), f"{service} exited:\n{self.logs(service)}"
            return container.attrs["State"].get("Health", {}).get("Status") == "healthy"

        wait_for(f"{service} to be healthy", healthy, timeout, diagnose=lambda: self.logs(service))

    def logs(self, service: str, tail: int = 80) -> str:
        try:
            return self.containers[service].logs(tail=tail).decode("utf-8", "replace")
        except (KeyError, docker.errors.NotFound):
            return f"({service}: no container)"

    def diagnose(self) -> str:
        return "\n".join(f"--- {s} ---\n{self.logs(s)}" for s in self.containers)

    def up(self) -> None:
        """Network and volume, then Postgres → code → webserver; the daemon is started by the test (start())."""
        self.client.networks.create(self.network, driver="bridge", labels={TEST_LABEL: self.name})
        self.client.volumes.create(self.volume, labels={TEST_LABEL: self.name})
        os.makedirs(os.path.join(self.root, "data"), exist_ok=True)
        for service in ("dagster-postgres", "dagster-code", "dagster-webserver"):
            self.start(service)
        self.wait_healthy("dagster-webserver", 180)
        web = self.containers["dagster-webserver"]
        web.reload()
        port = web.ports["3000/tcp"][0]["HostPort"]
        self.url = f"http://127.0.0.1:{port}"

    def down(self) -> None:
        """Everything this deployment created, the daemon first (it launches run containers), even after a
        failure. Containers are found by label, so stray run containers go too."""
        for service in ("dagster-daemon",):
            if service in self.containers:
                try:
                    self.containers[service].remove(force=True)
                except docker.errors.NotFound:
                    pass
        for c in self.client.containers.list(all=True, filters={"label": f"{TEST_LABEL}={self.name}"}):
            try:
                c.remove(force=True, v=True)
            except docker.errors.NotFound:
                pass
        for n in self.client.networks.list(names=[self.network]):
            if n.name == self.network:  # the Engine's name filter also matches substrings
                n.remove()
        for v in self.client.volumes.list(filters={"label": f"{TEST_LABEL}={self.name}"}):
            v.remove(force=True)

    # --- GraphQL ---------------------------------------------------------------------------------------------------

    def gql(self, query: str, **variables: Any) -> dict:
        resp = requests.post(f"{self.url}/graphql", json={"query": query, "variables": variables}, timeout=60)
        resp.raise_for_status()
        body = resp.json()
        assert not body.get("errors"), body["errors"]
        return body["data"]

    def location_loaded(self) -> bool:
        data = self.gql("""{ workspaceOrError { __typename ... on Workspace { locationEntries {
            name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }""")
        entries = {e["name"]: e for e in data["workspaceOrError"]["locationEntries"]}
        entry = entries[LOCATION]
        if entry["loadStatus"] != "LOADED":
            return False
        if entry["locationOrLoadError"]["__typename"] == "PythonError":
            # The webserver may have asked before the code server was serving: ask it to reload.
            self.gql("mutation($name: String!) { reloadRepositoryLocation(repositoryLocationName: $name) "
                     "{ __typename } }", name=LOCATION)
            return False
        return True

    def launch(self, assets: list[str], tags: dict[str, str], checks: bool = True) -> str:
        """A run of `assets` (with their checks, unless `checks` is False) launched as the UI launches it."""
        data = self.gql("""mutation($params: ExecutionParams!) { launchRun(executionParams: $params) {
              __typename ... on LaunchRunSuccess { run { runId } } ... on Error { message } } }""",
                        params={"selector": {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY,
                                             "jobName": "__ASSET_JOB",
                                             "assetSelection": [{"path": [a]} for a in assets],
                                             **({} if checks else {"assetCheckSelection": []})},
                                "mode": "default",
                                "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in tags.items()]}})
        result = data["launchRun"]
        assert result["__typename"] == "LaunchRunSuccess", result
        return result["run"]["runId"]

    def run(self, run_id: str) -> dict:
        data = self.gql("""query($id: ID!) { runOrError(runId: $id) { __typename ... on Run {
              runId status tags { key value } assetSelection { path } } } }""", id=run_id)
        return data["runOrError"]

    def runs_tagged(self, key: str, value: str) -> list[dict]:
        data = self.gql("""query($tags: [ExecutionTag!]) { runsOrError(filter: {tags: $tags}) { __typename
              ... on Runs { results { runId status tags { key value } assetSelection { path } } } } }""",
                        tags=[{"key": key, "value": value}])
        return data["runsOrError"]["results"]

    def run_messages(self, run_id: str) -> str:
        data = self.gql("""query($id: ID!) { logsForRun(runId: $id) { __typename ... on EventConnection {
              events { __typename ... on MessageEvent { message } } } } }""", id=run_id)
        events = data["logsForRun"].get("events") or []
        return "\n".join(e.get("message", "") for e in events[-30:])

    def wait_run(self, run_id: str, timeout: float = 240) -> dict:
        run = wait_for(f"run {run_id} to finish", lambda: (r := self.run(run_id))["status"] in TERMINAL and r,
                       timeout, interval=2, diagnose=self.diagnose)
        assert run["status"] == "SUCCESS", f"run {run_id}: {run['status']}\n{self.run_messages(run_id)}\n" \
                                           f"{self.diagnose()}"
        return run

    def psql(self, sql: str) -> str:
        code, out = self.containers["dagster-postgres"].exec_run(
            ["psql", "-U", "dagster", "-d", "dagster", "-h", "127.0.0.1", "-Atc", sql],
            environment={"PGPASSWORD": self.compose["services"]["dagster-postgres"]["environment"]
                         ["POSTGRES_PASSWORD"]})
        assert code == 0, out.decode()
        return out.decode().strip()


def build_images() -> dict[str, str]:
    proc = subprocess.run(["bash", os.path.join(PROD, "build.sh")], capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, f"docker/prod/build.sh failed:\n{proc.stderr[-4000:]}"
    images = dict(line.split("=", 1) for line in proc.stdout.split() if "=" in line)
    assert set(images) == {"DAGSTER_IMAGE", "DAGSTER_CODE_IMAGE"}, proc.stdout
    return images


# Backups of the test stack's Postgres and config, so the UI has all eight layer groups to show. The off-site store is
# the container `<deployment>-offsite` on the deployment's network (prodg/s3-store), started by the test that backs
# up; its keys are B2_KEY_ID / B2_KEY_SECRET (the defaults), which that test writes into the stack's secrets file.
OFFSITE_BUCKET = "prodg-test-offsite"
BACKUPS = """
backups:
  bucket: prodg-test-offsite
  endpoint_url: http://{name}-offsite:9000
  start_date: "2026-11-01"
  encryption:
    recipients: {operator: age1py04q4lel6a9kcek0k90dn47v97ukkzqzxg5q240tmc2jrqja5mqjzjxm8}
  targets:
    postgres: {method: pg_dumpall, service: postgres, prefix: postgres/, retention_days: 30}
    configs: {method: config_archive, prefix: configs/, retention_days: 90}
"""


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, docker_client) -> Deployment:
    images = build_images()
    root = str(tmp_path_factory.mktemp("prod"))
    name = f"prodgprod{uuid.uuid4().hex[:8]}"
    bed = make_testbed(root, docker_client, name)
    age_keygen(os.path.join(root, "backup-host.agekey"))  # docker/prod's PRODG_BACKUP_IDENTITY: signs the manifests
    with open(os.path.join(bed.repo, "config", "prodg.yaml"), "a") as fh:
        fh.write(BACKUPS.replace("{name}", name))  # so the code location defines every layer group, backups too
    bed.commit("backups layer")
    dep = Deployment(docker_client, bed, root, name, images)
    try:
        dep.down()  # leftovers of an earlier run with the same pid
        dep.up()
        wait_for("the webserver's GraphQL endpoint", lambda: dep.gql("{ version }")["version"], 180,
                 diagnose=dep.diagnose)
        wait_for("the prodg code location to load in the webserver", dep.location_loaded, 180, interval=2,
                 diagnose=dep.diagnose)
        # The sensor deploys what changed since its cursor; with none, its first tick would reconcile the whole
        # test stack. The test deploys one cheap asset per commit instead: the first commit counts as deployed.
        result = dep.gql("""mutation($s: SensorSelector!, $c: String) { setSensorCursor(sensorSelector: $s,
              cursor: $c) { __typename ... on Error { message } } }""",
                         s={"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY, "sensorName": SENSOR},
                         c=bed.commits[-1])
        assert result["setSensorCursor"]["__typename"] == "Sensor", result
        dep.start("dagster-daemon")
        yield dep
    finally:
        dep.down()
        bed.cleanup()


def test_materialisation_runs_in_its_own_container_and_logs_to_postgres(deployment: Deployment):
    dep = deployment
    commit = dep.bed.commits[-1]
    # The Engine's events of run containers, followed live from before the launch: asked for afterwards, they come from
    # the Engine's short history, which a busy Engine (healthchecks of every container) has already moved past.
    stream = dep.client.events(since=int(time.time()) - 1, decode=True,
                               filters={"type": "container", "label": "dagster/run_id"})
    seen: list[tuple[str, str]] = []
    threading.Thread(target=lambda: [seen.append((e.get("status") or e.get("Action") or "", e.get("id", "")))
                                     for e in stream], daemon=True).start()
    run_id = dep.launch(["secrets_env"], {"prodg/commit": commit})
    run = dep.wait_run(run_id)
    tags = {t["key"]: t["value"] for t in run["tags"]}
    assert tags["prodg/commit"] == commit
    assert tags["dagster/image"] == dep.images["DAGSTER_CODE_IMAGE"]
    container_id = tags["docker/container_id"]

    # DockerRunLauncher created and started a container of the code image for this run; it ended and was removed.
    def lifecycle() -> list[str]:
        mine = [status for status, cid in list(seen) if cid == container_id]
        return mine if "destroy" in mine else []

    try:
        statuses = wait_for(f"the run container {container_id[:12]} to be removed", lifecycle, 60)
    finally:
        stream.close()
    assert {"create", "start", "die", "destroy"} <= set(statuses), statuses
    with pytest.raises(docker.errors.NotFound):
        dep.client.containers.get(container_id)

    # The run's events are in Dagster's Postgres, the materialisation among them, with the asset's metadata.
    types = set(dep.psql(f"SELECT DISTINCT dagster_event_type FROM event_logs WHERE run_id = '{run_id}'").split())
    wanted = {dg.DagsterEventType.RUN_START, dg.DagsterEventType.ASSET_MATERIALIZATION,
              dg.DagsterEventType.ASSET_CHECK_EVALUATION, dg.DagsterEventType.RUN_SUCCESS}
    assert {t.value for t in wanted} <= types, types
    def stored(event_type: dg.DagsterEventType) -> dg.EventLogEntry:
        text = dep.psql(f"SELECT event FROM event_logs WHERE run_id = '{run_id}' "
                        f"AND dagster_event_type = '{event_type.value}'")
        return dg.deserialize_value(text, dg.EventLogEntry)

    materialisation = stored(dg.DagsterEventType.ASSET_MATERIALIZATION).asset_materialization
    assert materialisation.asset_key == dg.AssetKey("secrets_env")
    assert materialisation.metadata["commit"].value == commit
    assert materialisation.metadata["keys_missing"].value == "none", materialisation.metadata
    check = stored(dg.DagsterEventType.ASSET_CHECK_EVALUATION).dagster_event.event_specific_data
    assert (check.check_name, check.passed) == ("secrets_complete_and_private", True), check
    assert dep.psql(f"SELECT status FROM runs WHERE run_id = '{run_id}'") == "SUCCESS"

    # Its stdout/stderr outlive the removed container: they are on the storage volume the webserver reads.
    listing = dep.client.containers.run("prodg/base:bookworm", ["find", f"/storage/compute_logs/{run_id}", "-type",
                                                                 "f"],
                                        volumes=[f"{dep.volume}:/storage:ro"], labels={TEST_LABEL: dep.name},
                                        remove=True).decode()
    assert ".out" in listing and ".err" in listing, listing


def test_a_nightly_backup_in_its_run_container_reaches_the_store_with_keys_from_the_secrets_file(
        deployment: Deployment):
    """The run container gets no store key in its environment (dagster.yaml passes none): it reads B2_KEY_ID and
    B2_KEY_SECRET from the secrets file on its mount, as the host keeps them."""
    dep, bed = deployment, deployment.bed
    key_id, secret = f"prodg-{dep.name}", f"b2-Secret-{os.urandom(8).hex()}"
    with open(bed.env["PRODG_SECRETS_FILE"], encoding="utf-8") as fh:
        secrets_before = fh.read()
    with open(bed.env["PRODG_SECRETS_FILE"], "a", encoding="utf-8") as fh:
        fh.write(f"B2_KEY_ID={key_id}\nB2_KEY_SECRET={secret}\n")
    offsite = dep.client.containers.run("prodg/s3-store:bookworm", name=f"{dep.name}-offsite", detach=True,
                                        network=dep.network, labels={TEST_LABEL: dep.name},
                                        environment={"MINIO_ROOT_USER": key_id, "MINIO_ROOT_PASSWORD": secret})
    try:
        assert offsite.exec_run(["mkdir", "-p", f"/data/{OFFSITE_BUCKET}"]).exit_code == 0  # a bucket is a folder
        day = (datetime.datetime.now(datetime.timezone.utc).date() - datetime.timedelta(days=1)).isoformat()
        run_id = dep.launch(["config_backup"], {"dagster/partition": day, "prodg/kind": "backup",
                                                 "prodg/capture-late": "true"}, checks=False)  # past midnight
        dep.wait_run(run_id)
        code, out = offsite.exec_run(["find", f"/data/{OFFSITE_BUCKET}/configs/{day}", "-type", "f"])
        assert code == 0 and f"configs/{day}/manifest.json" in out.decode(), out.decode()
        assert ".tar.zst.age" in out.decode()
        assert secret not in dep.run_messages(run_id)
    finally:
        offsite.remove(force=True, v=True)
        with open(bed.env["PRODG_SECRETS_FILE"], "w", encoding="utf-8") as fh:  # as the other tests know it
            fh.write(secrets_before)


def set_stop_timeout(bed, seconds: int) -> None:
    """prodg.yaml deploy.stop_timeout_s set to `seconds`, whatever an earlier test left there (any order)."""
    path = os.path.join(bed.repo, "config", "prodg.yaml")
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    assert re.search(r"stop_timeout_s: \d+", text) and f"stop_timeout_s: {seconds}\n" not in text
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(re.sub(r"stop_timeout_s: \d+", f"stop_timeout_s: {seconds}", text, count=1))


def test_push_to_config_repo_is_deployed_by_the_daemons_sensor_tick(deployment: Deployment):
    dep, bed = deployment, deployment.bed
    before = load_desired_state(DirTree(os.path.join(bed.repo, "config")), bed.env)
    set_stop_timeout(bed, 6)
    after = load_desired_state(DirTree(os.path.join(bed.repo, "config")), bed.env)
    assert impacted_assets(before, after)[0] == {"retired_services"}, "the push must stay cheap: one layer asset"
    commit = bed.commit("deploy: longer stop grace")

    runs = wait_for(f"the sensor to request a run for {commit[:12]}", lambda: dep.runs_tagged("prodg/commit", commit),
                    120, interval=2, diagnose=dep.diagnose)
    assert len(runs) == 1, runs
    run = dep.wait_run(runs[0]["runId"])
    tags = {t["key"]: t["value"] for t in run["tags"]}
    assert tags["dagster/sensor_name"] == "config_repo_sensor"
    assert tags["dagster/run_key"].split(":")[0] == commit  # <sha>:<decision>
    assert [a["path"] for a in run["assetSelection"]] == [["retired_services"]]
    assert tags["docker/container_id"]  # it too ran in a container of its own


@pytest.mark.fault(
    fault="a run's container killed (production shape)",
    happens='run monitoring marks the run failed ("Detected run worker status"); the run re-executed succeeds in a '
            "container of its own and its materialisation and check are stored; the failed run stays failed")
def test_a_run_whose_container_dies_is_marked_failed(deployment: Deployment, measured):
    """Run monitoring: the run's container is killed while the run is STARTED; the daemon notices that the container
    is gone and marks the run failed (it would otherwise stay STARTED for ever). Then the operator's retry — the failed
    run re-executed (all steps) through the webserver, nothing killing it now — succeeds in a container of its own and
    stores what the run was to store, while the killed run's record stays as it was."""
    dep = deployment
    commit = dep.bed.commits[-1]
    for _attempt in range(3):  # the kill must land between STARTED and the end of the (short) run
        run_id = dep.launch(["secrets_env"], {"prodg/commit": commit})
        killed, deadline = False, time.monotonic() + 120
        while not killed and time.monotonic() < deadline:
            status = dep.run(run_id)["status"]
            if status in TERMINAL:
                break
            if status == "STARTED":
                for container in dep.client.containers.list(filters={"label": f"dagster/run_id={run_id}"}):
                    try:
                        container.kill()
                        killed = True
                    except docker.errors.APIError:
                        pass  # it finished in the meantime
                if not killed:
                    break
            time.sleep(0.1)
        if killed:
            break
        wait_for(f"run {run_id} to finish", lambda: dep.run(run_id)["status"] in TERMINAL, 120, interval=2)
    else:
        pytest.fail("three runs finished before their container could be killed")
    run = wait_for("run monitoring to mark the killed run", lambda: (r := dep.run(run_id))["status"] in TERMINAL
                   and r, 120, interval=2, diagnose=dep.diagnose)
    assert run["status"] == "FAILURE", run
    assert "Detected run worker status" in dep.run_messages(run_id)

    data = dep.gql("""mutation($params: ReexecutionParams!) { launchRunReexecution(reexecutionParams: $params) {
          __typename ... on LaunchRunSuccess { run { runId } } ... on Error { message } } }""",
                   params={"parentRunId": run_id, "strategy": "ALL_STEPS"})
    assert data["launchRunReexecution"]["__typename"] == "LaunchRunSuccess", data
    retry_id = data["launchRunReexecution"]["run"]["runId"]
    retry = wait_for(f"the re-execution {retry_id} to finish", lambda: (r := dep.run(retry_id))["status"] in TERMINAL
                     and r, 240, interval=2, diagnose=dep.diagnose)
    assert measured.retried(converged=retry["status"] == "SUCCESS"), \
        f"{retry['status']}\n{dep.run_messages(retry_id)}\n{dep.diagnose()}"
    tags = {t["key"]: t["value"] for t in retry["tags"]}
    assert tags["dagster/parent_run_id"] == run_id and tags["prodg/commit"] == commit
    assert tags["docker/container_id"]  # it too ran in a container of its own
    assert dep.run(run_id)["status"] == "FAILURE"  # the killed run is not rewritten by its retry
    # Nothing lost: what the run was to store is in Dagster's Postgres for the retry — its materialisation of
    # secrets_env at the commit and its passing check — and the killed run's failure is still there.
    stored = set()
    for line in dep.psql(f"SELECT event FROM event_logs WHERE run_id = '{retry_id}'").splitlines():
        event = dg.deserialize_value(line, dg.EventLogEntry).dagster_event
        if event is not None:
            key = event.asset_key or getattr(event.event_specific_data, "asset_key", None)
            stored.add((event.event_type_value, key.to_user_string() if key else ""))
    wanted = {(dg.DagsterEventType.RUN_START.value, ""), (dg.DagsterEventType.RUN_SUCCESS.value, ""),
              (dg.DagsterEventType.ASSET_MATERIALIZATION.value, "secrets_env"),
              (dg.DagsterEventType.ASSET_CHECK_EVALUATION.value, "secrets_env")}
    assert measured.compare("events", expected=wanted, actual=stored) == 0, stored
    event = dg.deserialize_value(dep.psql(
        f"SELECT event FROM event_logs WHERE run_id = '{retry_id}' AND dagster_event_type = 'ASSET_MATERIALIZATION'"),
        dg.EventLogEntry)
    assert event.asset_materialization.metadata["commit"].value == commit
    assert dep.psql(f"SELECT count(*) FROM event_logs WHERE run_id = '{run_id}' "
                    f"AND dagster_event_type = '{dg.DagsterEventType.RUN_FAILURE.value}'") == "1"


@pytest.mark.fault(
    fault="the Dagster daemon killed and restarted during a sensor-launched run",
    happens="the run ends (its container carries on, or monitoring fails it) — never left STARTED/QUEUED; the "
            "restarted daemon's next tick launches exactly one run for the next commit and none again for the first")
def test_daemon_restarted_during_a_sensor_launched_run_loses_nothing(deployment: Deployment, measured):
    """The daemon is killed and started again while a run its sensor launched is under way (STARTED, in its own
    container): the run finishes with SUCCESS — its worker never depended on the daemon — and the restarted daemon's
    next tick launches exactly one run for the next commit and none again for the first."""
    dep, bed = deployment, deployment.bed
    daemon = dep.containers["dagster-daemon"]
    set_stop_timeout(bed, 7)
    first = bed.commit("deploy: stop grace 7 s (daemon restarted during its run)")
    runs = wait_for(f"the sensor to launch a run for {first[:12]}",
                    lambda: [r for r in dep.runs_tagged("prodg/commit", first)
                             if r["status"] in ("QUEUED", "STARTING", "STARTED")], 120, interval=0.3,
                    diagnose=dep.diagnose)
    run_id = runs[0]["runId"]
    # under way: its own container runs it (a run whose worker dies is run monitoring's case: the test above)
    status_at_kill = wait_for(f"run {run_id} to start", lambda: (st := dep.run(run_id)["status"]) != "QUEUED"
                              and st != "STARTING" and st, 120, interval=0.2, diagnose=dep.diagnose)
    assert status_at_kill == "STARTED", status_at_kill  # the stop grace of 7 s keeps it running long enough
    daemon.kill()
    daemon.start()
    run = wait_for(f"run {run_id} to end after the daemon restart", lambda: (r := dep.run(run_id))["status"]
                   in TERMINAL and r, 240, interval=2, diagnose=dep.diagnose)
    assert run["status"] == "SUCCESS", f"{status_at_kill} at the kill\n{dep.run_messages(run_id)}\n{dep.diagnose()}"
    bed.edit("prodg.yaml", "stop_timeout_s: 7", "stop_timeout_s: 8")
    second = bed.commit("deploy: stop grace 8 s (after the restart)")
    runs = wait_for(f"the restarted daemon's sensor to launch a run for {second[:12]}",
                    lambda: dep.runs_tagged("prodg/commit", second), 180, interval=2, diagnose=dep.diagnose)
    assert len(runs) == 1, runs
    # the fault removed (the daemon is back): its sensor's same operation — launch the run of a pushed commit — is
    # retried by the next tick, and that run deploys
    second_run = wait_for(f"run {runs[0]['runId']} to finish", lambda: (r := dep.run(runs[0]["runId"]))["status"]
                          in TERMINAL and r, 240, interval=2, diagnose=dep.diagnose)
    assert measured.retried(converged=second_run["status"] == "SUCCESS"), \
        f"{second_run['status']}\n{dep.run_messages(runs[0]['runId'])}\n{dep.diagnose()}"
    # the push launched once, and (it succeeded) no run of an undeployed rest followed it
    of_first = dep.runs_tagged("prodg/commit", first)
    assert [r["runId"] for r in of_first] == [run_id], f"the first commit was launched again: {of_first}"
    # nothing lost: every commit pushed around the restart got its run
    launched = {c for c in (first, second) if dep.runs_tagged("prodg/commit", c)}
    assert measured.compare("commits", expected={first, second}, actual=launched) == 0, launched


def test_upgrade_and_backup_commands_of_the_docs_work(deployment: Deployment):
    """docs/PRODUCTION.md: `dagster instance migrate` against the Postgres storage, and a pg_dump of Dagster's database
    that pg_restore can read (the runs of the tests above are in it)."""
    dep = deployment
    code, out = dep.containers["dagster-daemon"].exec_run(["dagster", "instance", "migrate"])
    assert code == 0, out.decode()
    pg = dep.containers["dagster-postgres"]
    code, out = pg.exec_run(["sh", "-c", "pg_dump -U dagster -d dagster -Fc >/tmp/dagster.dump && "
                                         "pg_restore --list /tmp/dagster.dump && rm /tmp/dagster.dump"])
    listing = out.decode()
    assert code == 0, listing
    assert "TABLE DATA public runs" in listing and "TABLE DATA public event_logs" in listing, listing[-2000:]


def test_ui_asset_graph_shows_the_layer_groups(deployment: Deployment, tmp_path):
    dep = deployment
    expected = {spec.group_name for spec in prodg_assets.build_defs(dep.bed.env).resolve_all_asset_specs()}
    assert expected == set(LAYERS)  # the eight layer groups
    url = f"{dep.url}/asset-groups"
    dom, shot = look(url, f"{tmp_path}/chromium", "ui-asset-graph.png",
                     ready=lambda dom: all(shown(g, dom) for g in expected))
    absent = [g for g in sorted(expected) if not shown(g, dom)]
    assert not absent, f"{url} does not show the groups {absent} (of {sorted(expected)}); screenshot: {shot}"
    assert os.path.getsize(shot) > 10_000
