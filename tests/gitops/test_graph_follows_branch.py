"""Git is the whole truth, under `dagster dev` with its real daemon and webserver: a push that adds a service reloads
the code location by itself (no click), and the next tick deploys exactly the new service, tagged with its commit;
a push that removes it takes its asset out of the graph and reports the container (deploy.prune is off); a push that
changes a setting the definitions are built from (the drift schedule) is in effect after the reload."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import requests

from prodg_assets.contract import SENSOR_NAME

from ..conftest import ROOT, make_testbed

pytestmark = pytest.mark.docker

def cache_service(name: str) -> str:
    """A Compose block for a new Redis-like cache called `name` (what a push that adds a service adds)."""
    return f"""
  {name}:
    image: redis:7-alpine
    container_name: ${{PRODG_TEST_NAME}}-{name}
    command: [redis-server, --save, ""]
    ports: [127.0.0.1::6379]
    healthcheck:
      test: [CMD, redis-cli, ping]
      interval: 1s
      timeout: 5s
      retries: 30
    x-prodg: {{layer: data_stores}}
"""


CACHE2 = cache_service("cache2")


class Dagster:
    """The webserver's GraphQL API, as the UI uses it."""

    def __init__(self, url: str, log: str):
        self.url, self.log = url, log

    def gql(self, query: str, **variables) -> dict:
        resp = requests.post(f"{self.url}/graphql", json={"query": query, "variables": variables}, timeout=30)
        resp.raise_for_status()
        body = resp.json()
        assert not body.get("errors"), body["errors"]
        return body["data"]

    def runs_for(self, commit: str) -> list[dict]:
        data = self.gql("""query($tags: [ExecutionTag!]) { runsOrError(filter: {tags: $tags}) { __typename
              ... on Runs { results { runId status assetSelection { path } } } } }""",
                        # the git sensor's runs (the drift schedule's, every 15 minutes, carry the commit too)
                        tags=[{"key": "prodg/commit", "value": commit},
                              {"key": "dagster/sensor_name", "value": SENSOR_NAME}])
        return data["runsOrError"]["results"]

    def schedule_crons(self) -> dict[str, str]:
        data = self.gql("""{ schedulesOrError(repositorySelector: {repositoryName: "__repository__",
              repositoryLocationName: "prodg"}) { __typename ... on Schedules { results { name cronSchedule } } } }""")
        return {s["name"]: s["cronSchedule"] for s in data["schedulesOrError"]["results"]}

    def asset_keys(self) -> set[str]:
        data = self.gql("{ assetNodes { assetKey { path } } }")
        return {"/".join(n["assetKey"]["path"]) for n in data["assetNodes"]}

    def wait(self, what: str, probe, budget: int = 240):
        """probe() until truthy, for at most `budget` polls a second apart (a bound in attempts, not in time)."""
        last = None
        for _ in range(budget):
            try:
                found = probe()
                if found:
                    return found
            except (requests.RequestException, AssertionError, KeyError) as exc:
                last = exc
            time.sleep(1)
        with open(self.log, encoding="utf-8", errors="replace") as fh:
            tail = fh.read()[-3000:]
        raise AssertionError(f"gave up waiting for {what} (last error: {last!r})\n--- dagster dev ---\n{tail}")

    def finished_run(self, commit: str) -> dict:
        def done():
            runs = self.runs_for(commit)
            return runs if runs and all(r["status"] in ("SUCCESS", "FAILURE", "CANCELED") for r in runs) else None
        runs = self.wait(f"the run of {commit[:12]}", done, budget=600)
        assert len(runs) == 1, runs
        return runs[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def dev(tmp_path, docker_client):
    bed = make_testbed(str(tmp_path), docker_client, f"prodgg{os.getpid() % 10000}")
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(os.path.join(ROOT, "docker", "dev", "dagster.yaml"), home / "dagster.yaml")
    (tmp_path / "workspace.yaml").write_text(
        f"load_from:\n  - python_file:\n      relative_path: {os.path.join(ROOT, 'definitions.py')}\n"
        f"      location_name: prodg\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, **bed.env, "DAGSTER_HOME": str(home), "PRODG_SENSOR_INTERVAL_S": "5",
           "PRODG_DAGSTER_URL": url}
    log = str(tmp_path / "dagster-dev.log")
    bed.cleanup()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "dagster", "dev", "-h", "127.0.0.1", "-p", str(port),
                                 "-w", str(tmp_path / "workspace.yaml")], cwd=str(tmp_path), env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield bed, Dagster(url, log)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # dagster dev and the servers it started: its own process group
            proc.wait(timeout=60)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        bed.cleanup()


def test_a_pushed_service_reloads_the_graph_and_deploys_alone_and_a_removed_one_leaves_it(dev):
    bed, dagster = dev
    first = dagster.finished_run(bed.commits[-1])  # the first tick: everything, from an empty Engine
    assert first["status"] == "SUCCESS", first

    with open(bed.compose, "a") as fh:
        fh.write(CACHE2)
    added = bed.commit("a second cache")
    run = dagster.finished_run(added)
    assert run["status"] == "SUCCESS", run
    assert [a["path"] for a in run["assetSelection"]] == [["cache2"]]  # the new service alone, never everything
    assert "cache2" in dagster.asset_keys()  # in the UI's graph, no reload clicked
    cache2 = bed.containers()["cache2"]
    assert cache2.labels["prodg.commit"] == added
    assert cache2.attrs["State"]["Health"]["Status"] == "healthy"
    untouched = {s: c.labels["prodg.commit"] for s, c in bed.containers().items() if s != "cache2"}
    assert set(untouched.values()) == {bed.commits[0]}

    with open(bed.compose) as fh:
        text = fh.read()
    with open(bed.compose, "w") as fh:
        fh.write(text.replace(CACHE2, ""))
    removed = bed.commit("the second cache goes again")
    dagster.wait("cache2 to leave the graph", lambda: "cache2" not in dagster.asset_keys())
    run = dagster.finished_run(removed)
    assert run["status"] == "SUCCESS", run
    assert [a["path"] for a in run["assetSelection"]] == [["retired_services"]]
    assert "cache2" in bed.containers()  # deploy.prune is off: reported by no_retired_services, not removed

    bed.edit("prodg.yaml", "  stop_timeout_s: 5\n", "  stop_timeout_s: 5\n  drift_schedule: \"*/7 * * * *\"\n")
    bed.commit("drift every 7 minutes")
    dagster.wait("the new drift schedule", lambda: dagster.schedule_crons().get("drift_schedule") == "*/7 * * * *")
