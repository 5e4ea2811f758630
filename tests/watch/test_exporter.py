"""`prodg exporter` beside a real `dagster dev` (webserver + daemon) over the test stack, scraped by a real
Prometheus loading the bundled alert rules: the deployed commit, each service's deploy result and checks, the daemon's
heartbeat and the git sensor's tick come out of the Dagster instance's storage; a scrape without the bearer token is
refused; and when every Dagster process has stopped the exporter still answers with the last heartbeat, so the
heartbeat rule (its firing is unit-tested in test_rules.py) has something to go stale on.

A backup target whose newest day is old (reported as an external materialisation of three days ago: the bed has no
store to back up into) and whose yesterday is missing: the metric shows the old capture, `ProdgBackupStale` fires in
Prometheus, and the daemon's own missed-backup sensor tells the Telegram stand-in once."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import uuid

import dagster as dg
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import TEST_SECRETS, make_testbed
from tests.dagster_dev import dagster_dev, free_port, stop
from tests.standins.telegram import TelegramStandIn

pytestmark = pytest.mark.docker
TOKEN = "exporter-test-token"
RULES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "config",
                     "compose", "prometheus", "rules")


def scrape(url: str, token: str | None = TOKEN) -> dict[tuple[str, frozenset], float]:
    resp = requests.get(url, timeout=30, headers={"Authorization": f"Bearer {token}"} if token else {})
    assert resp.status_code == 200, resp.status_code
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(resp.text) for s in family.samples}


def sample(metrics: dict, name: str, **labels) -> float | None:
    return next((v for (n, ls), v in metrics.items() if n == name and set(labels.items()) <= ls), None)


def start_exporter(tmp_path, env: dict, port: int) -> subprocess.Popen:
    """`prodg exporter` on 127.0.0.1:`port` with `env` (DAGSTER_HOME and the rest), scraped with TOKEN."""
    return subprocess.Popen([sys.executable, "-m", "prodg_assets.cli", "exporter", "--listen", f"127.0.0.1:{port}"],
                            env={**env, "PRODG_METRICS_TOKEN": TOKEN}, stdout=open(tmp_path / "exporter.log", "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def start_prometheus(docker_client, tmp_path, exporter_port: int, prometheus_port: int):
    """The stack's Prometheus (its image) with the bundled rules, scraping the exporter with the token from a file;
    its API at http://127.0.0.1:`prometheus_port`/api/v1. The container, to remove."""
    (tmp_path / "token").write_text(TOKEN)
    (tmp_path / "token").chmod(0o644)
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 2s, evaluation_interval: 2s}\n"
        "rule_files: [/etc/prometheus/rules/*.yml]\n"
        "scrape_configs:\n  - job_name: prodg\n"
        "    authorization: {credentials_file: /etc/prometheus/token}\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{exporter_port}']}}]\n")
    return docker_client.containers.run(
        "prodg/prometheus:bookworm", ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/tmp/tsdb",
                                      f"--web.listen-address=127.0.0.1:{prometheus_port}"],
        detach=True, network_mode="host", volumes={
            str(tmp_path / "prometheus.yml"): {"bind": "/etc/prometheus/prometheus.yml", "mode": "ro"},
            str(tmp_path / "token"): {"bind": "/etc/prometheus/token", "mode": "ro"},
            RULES: {"bind": "/etc/prometheus/rules", "mode": "ro"}})


def test_the_exporter_reports_the_instance_and_prometheus_scrapes_it(tmp_path, docker_client):
    bed = make_testbed(str(tmp_path), docker_client, f"prodgx{uuid.uuid4().hex[:8]}")
    port, prometheus_port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    exporter = prometheus = None
    telegram = TelegramStandIn(TEST_SECRETS["TELEGRAM_BOT_TOKEN"]).__enter__()
    bed.env["TELEGRAM_API_URL"] = telegram.url
    today = datetime.datetime.now(datetime.timezone.utc).date()
    bed.edit("prodg.yaml", "    on: [deploy_failure, backup_success, backup_failure]\n",
             "    on: [deploy_failure, backup_success, backup_failure, backup_missed]\n")
    bed.add_postgres_backups("prodg-exporter", "http://127.0.0.1:9", (today - datetime.timedelta(days=10)).isoformat())
    try:
        with dagster_dev(tmp_path, bed, interval_s=600) as dagster:
            first = dagster.finished_run(bed.commits[-1])  # the sensor's first tick deploys the stack
            assert first["status"] == "SUCCESS", first
            old_day = today - datetime.timedelta(days=3)
            captured = datetime.datetime.combine(old_day, datetime.time(23, 59), datetime.timezone.utc)
            with dg.DagsterInstance.from_config(str(tmp_path / "dagster_home")) as instance:
                instance.report_runless_asset_event(dg.AssetMaterialization(
                    "postgres_backup", partition=old_day.isoformat(),
                    metadata={"captured_at": captured.isoformat(), "bytes": 4096}))
            exporter = start_exporter(tmp_path, {**os.environ, **bed.env,
                                                 "DAGSTER_HOME": str(tmp_path / "dagster_home")}, port)
            dagster.wait("the exporter", lambda: requests.get(url, timeout=5).status_code == 401)
            assert requests.get(url, timeout=5, headers={"Authorization": "Bearer wrong"}).status_code == 401

            metrics = scrape(url)
            assert sample(metrics, "prodg_exporter_config_loaded") == 1
            assert sample(metrics, "prodg_service_info", service="redis", commit=bed.commits[-1]) == 1
            assert sample(metrics, "prodg_service_last_deploy_success", service="redis") == 1
            assert sample(metrics, "prodg_check_passed", asset="redis", check="in_sync") == 1
            assert sample(metrics, "prodg_last_tick_timestamp_seconds", instigator="config_repo_sensor",
                          kind="sensor") is not None
            assert sample(metrics, "prodg_backup_last_captured_timestamp_seconds", target="postgres") == \
                captured.timestamp()
            beat = sample(metrics, "prodg_daemon_heartbeat_timestamp_seconds", daemon="SCHEDULER")
            assert beat is not None
            # the daemon is alive: its heartbeat moves on (it beats every 30 s or so)
            dagster.wait("a newer daemon heartbeat", lambda: sample(
                scrape(url), "prodg_daemon_heartbeat_timestamp_seconds", daemon="SCHEDULER") > beat, budget=180)

            # the stack's Prometheus, with the bundled rules, scrapes it with the token from a file
            prometheus = start_prometheus(docker_client, tmp_path, port, prometheus_port)
            api = f"http://127.0.0.1:{prometheus_port}/api/v1"

            def deployed_commit_in_prometheus():
                result = requests.get(f"{api}/query", params={"query": 'prodg_service_info{service="redis"}'},
                                      timeout=5).json()["data"]["result"]
                return result and result[0]["metric"]["commit"]

            assert dagster.wait("Prometheus to scrape prodg", deployed_commit_in_prometheus) == bed.commits[-1]

            def rules_evaluated():
                groups = requests.get(f"{api}/rules", timeout=5).json()["data"]["groups"]
                rules = {r["name"]: r for g in groups for r in g["rules"]}
                return rules if rules and all(r["health"] == "ok" for r in rules.values()) else None

            rules = dagster.wait("the bundled rules to be evaluated", rules_evaluated)
            assert {"ProdgDaemonHeartbeatStale", "ProdgDeployFailed", "ProdgBackupStale"} <= set(rules)
            alerts = requests.get(f"{api}/alerts", timeout=5).json()["data"]["alerts"]
            assert not [a for a in alerts if a["labels"]["alertname"] in ("ProdgDaemonHeartbeatStale",
                                                                         "ProdgDeployFailed", "ProdgExporterDown")]

            def stale_backup_firing():
                return [a for a in requests.get(f"{api}/alerts", timeout=5).json()["data"]["alerts"]
                        if a["labels"]["alertname"] == "ProdgBackupStale" and a["state"] == "firing"]

            (stale,) = dagster.wait("ProdgBackupStale to fire", stale_backup_firing)
            assert stale["labels"]["target"] == "postgres"
            # the daemon's missed-backup sensor: yesterday (or, before 04:00 UTC, the day before) has no backup
            missed = dagster.wait("the missed backup told", lambda: [
                m["text"] for m in telegram.messages if m["text"].startswith("❌ backup of ")])
            assert len(missed) == 1 and "- postgres_backup: no backup run at all" in missed[0]
            last_beat = sample(scrape(url), "prodg_daemon_heartbeat_timestamp_seconds", daemon="SCHEDULER")
        # every Dagster process has stopped: the exporter still answers, with the heartbeat it last saw
        after = scrape(url)
        assert sample(after, "prodg_daemon_heartbeat_timestamp_seconds", daemon="SCHEDULER") >= last_beat
        assert sample(after, "prodg_service_info", service="redis", commit=bed.commits[-1]) == 1
    finally:
        telegram.__exit__(None, None, None)
        if exporter is not None:
            stop(exporter)
        if prometheus is not None:
            prometheus.remove(force=True)
        bed.cleanup()
    assert TOKEN not in (tmp_path / "exporter.log").read_text()
