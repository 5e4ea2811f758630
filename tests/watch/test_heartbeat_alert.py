"""Something watches the watcher, in a real Prometheus with the bundled rules: with nothing of Dagster running (an
instance whose daemon has never beaten), `prodg exporter` still answers and `ProdgDaemonHeartbeatStale` fires; once
the daemon runs, its heartbeat reaches Prometheus through the exporter and the alert clears. (The rule's other arm,
a heartbeat older than 5 minutes, is unit-tested with promtool in test_rules.py: waiting 5 minutes here would only
test the clock.)"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest
import requests

from tests.conftest import ROOT, make_testbed
from tests.dagster_dev import Dagster, free_port, stop

from .test_exporter import sample, scrape, start_exporter, start_prometheus

pytestmark = pytest.mark.docker
ALERT = "ProdgDaemonHeartbeatStale"


def firing(api: str) -> list[dict]:
    return [a for a in requests.get(f"{api}/alerts", timeout=5).json()["data"]["alerts"]
            if a["labels"]["alertname"] == ALERT and a["state"] == "firing"]


def test_the_heartbeat_alert_fires_with_no_daemon_and_clears_when_it_runs(tmp_path, docker_client):
    bed = make_testbed(str(tmp_path), docker_client, f"prodgb{uuid.uuid4().hex[:8]}")
    home = tmp_path / "dagster_home"
    home.mkdir()
    # runs the daemon's sensors ask for stay queued (nothing is deployed here): only its heartbeat matters
    (home / "dagster.yaml").write_text("telemetry: {enabled: false}\nrun_queue: {max_concurrent_runs: 0}\n")
    (tmp_path / "workspace.yaml").write_text(
        f"load_from:\n  - python_file:\n      relative_path: {os.path.join(ROOT, 'definitions.py')}\n"
        f"      location_name: prodg\n")
    env = {**os.environ, **bed.env, "DAGSTER_HOME": str(home)}
    port, prometheus_port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    exporter = daemon = prometheus = None
    (tmp_path / "daemon.log").touch()
    waiter = Dagster("http://127.0.0.1:9", str(tmp_path / "daemon.log"))  # its wait() only
    try:
        exporter = start_exporter(tmp_path, env, port)
        waiter.wait("the exporter", lambda: requests.get(url, timeout=5).status_code == 401)
        assert sample(scrape(url), "prodg_daemon_heartbeat_timestamp_seconds") is None  # never beaten

        prometheus = start_prometheus(docker_client, tmp_path, port, prometheus_port)
        api = f"http://127.0.0.1:{prometheus_port}/api/v1"
        (alert,) = waiter.wait(f"{ALERT} to fire with no daemon", lambda: firing(api))
        assert alert["labels"]["severity"] == "critical"

        daemon = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "dagster-daemon"), "run", "-w",
                                   str(tmp_path / "workspace.yaml")], cwd=str(tmp_path), env=env,
                                  stdout=open(tmp_path / "daemon.log", "w"), stderr=subprocess.STDOUT,
                                  start_new_session=True)
        waiter.wait("the daemon's heartbeat through the exporter", lambda: sample(
            scrape(url), "prodg_daemon_heartbeat_timestamp_seconds", daemon="SCHEDULER"))
        waiter.wait(f"{ALERT} to clear with the daemon running", lambda: not firing(api))
    finally:
        for proc in (daemon, exporter):
            if proc is not None:
                stop(proc)
        if prometheus is not None:
            prometheus.remove(force=True)
        bed.cleanup()
