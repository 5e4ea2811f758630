"""`dagster dev` (webserver + daemon) over a test bed, and its GraphQL API as the UI uses it: the harness of the tests
that need Dagster's own processes (the git sensor's ticks, reloads, pushes)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time

import requests

from prodg_assets.contract import ROTATION_SENSOR, SENSOR_NAME
from tests.standins.process import free_port

from .conftest import ROOT, Testbed


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
              ... on Runs { results { runId status assetSelection { path } tags { key value } } } } }""",
                        # the git sensor's runs (the drift schedule's, every 15 minutes, carry the commit too)
                        tags=[{"key": "prodg/commit", "value": commit},
                              {"key": "dagster/sensor_name", "value": SENSOR_NAME}])
        return data["runsOrError"]["results"]

    def step_failures(self, run_id: str) -> dict[str, str]:
        """Each failed step of a run → its error's message and its causes' (what raised it, under Dagster's own
        wrapper)."""
        data = self.gql("""query($id: ID!) { runOrError(runId: $id) { ... on Run { eventConnection { events {
              __typename ... on ExecutionStepFailureEvent { stepKey error { message causes { message } } } } } } } }""",
                        id=run_id)
        return {e["stepKey"]: "\n".join([e["error"]["message"], *(c["message"] for c in e["error"]["causes"])])
                for e in data["runOrError"]["eventConnection"]["events"]
                if e["__typename"] == "ExecutionStepFailureEvent"}

    def run_outcomes(self, run_id: str) -> tuple[dict[str, dict[str, str]], dict[str, bool]]:
        """(asset → its materialisation's text metadata, check name → passed) of a run."""
        data = self.gql("""query($id: ID!) { runOrError(runId: $id) { ... on Run { eventConnection { events {
              __typename
              ... on MaterializationEvent { assetKey { path } metadataEntries { label
                    ... on TextMetadataEntry { text } } }
              ... on AssetCheckEvaluationEvent { evaluation { checkName success } } } } } } }""", id=run_id)
        events = data["runOrError"]["eventConnection"]["events"]
        mats = {"/".join(e["assetKey"]["path"]): {m["label"]: m.get("text") for m in e["metadataEntries"]}
                for e in events if e["__typename"] == "MaterializationEvent"}
        checks = {e["evaluation"]["checkName"]: e["evaluation"]["success"] for e in events
                  if e["__typename"] == "AssetCheckEvaluationEvent"}
        return mats, checks

    def sensor_ticks_since(self, timestamp: float, sensor: str = SENSOR_NAME) -> int:
        """How many of the sensor's ticks started after `timestamp` (seconds) have finished."""
        data = self.gql("""query($sel: SensorSelector!) { sensorOrError(sensorSelector: $sel) { ... on Sensor {
              sensorState { ticks(limit: 50) { status timestamp } } } } }""",
                        sel={"repositoryName": "__repository__", "repositoryLocationName": "prodg",
                             "sensorName": sensor})
        ticks = data["sensorOrError"]["sensorState"]["ticks"]
        return sum(1 for t in ticks if t["timestamp"] > timestamp and t["status"] in ("SUCCESS", "SKIPPED", "FAILURE"))

    def rotation_runs(self) -> list[dict]:
        """The secret-rotation sensor's runs."""
        data = self.gql("""query($tags: [ExecutionTag!]) { runsOrError(filter: {tags: $tags}) { __typename
              ... on Runs { results { runId status assetSelection { path } tags { key value } } } } }""",
                        tags=[{"key": "dagster/sensor_name", "value": ROTATION_SENSOR}])
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


@contextlib.contextmanager
def dagster_dev(tmp_path, bed: Testbed, interval_s: int = 5):
    """`dagster dev` on a free port over `bed` (whose containers are removed before and after), the git sensor
    ticking every `interval_s`; yields the webserver's API."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(os.path.join(ROOT, "docker", "dev", "dagster.yaml"), home / "dagster.yaml")
    (tmp_path / "workspace.yaml").write_text(
        f"load_from:\n  - python_file:\n      relative_path: {os.path.join(ROOT, 'definitions.py')}\n"
        f"      location_name: prodg\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, **bed.env, "DAGSTER_HOME": str(home), "PRODG_SENSOR_INTERVAL_S": str(interval_s),
           "PRODG_DAGSTER_URL": url}
    log = str(tmp_path / "dagster-dev.log")
    bed.cleanup()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "dagster", "dev", "-h", "127.0.0.1", "-p", str(port),
                                 "-w", str(tmp_path / "workspace.yaml")], cwd=str(tmp_path), env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield Dagster(url, log)
    finally:
        stop(proc)
        bed.cleanup()


def stop(proc: subprocess.Popen) -> None:
    """End a process started in its own session, and everything in its process group."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass
