"""Grafana's side of watching: its alert rules are the Prometheus rules' conditions (generated, never edited by hand),
its dashboard and rules read only metrics prodg's exporter serves, and prodg validates the provisioning files as
Grafana would load them — a dangling reference is a located error, the bundled files have none."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import dagster as dg
import pytest
import yaml

from prodg_assets.desired import DirTree, validate
from prodg_assets.watch.metrics import Graph, InstanceCollector
from tests.conftest import ROOT
from tests.spec.conftest import BUNDLED_ENV, copy_config, edit, line_of

PROVISIONING = "compose/grafana/provisioning"
RULES = Path(ROOT) / "config" / "compose" / "prometheus" / "rules" / "prodg.yml"
GRAFANA_RULES = Path(ROOT) / "config" / PROVISIONING / "alerting" / "prodg.yml"
DASHBOARD = Path(ROOT) / "config" / PROVISIONING / "dashboards" / "mainframe.json"
PRODG = [str(Path(ROOT) / ".venv" / "bin" / "python"), "-m", "prodg_assets.cli"]


def test_grafanas_rules_are_generated_from_the_prometheus_rules():
    made = subprocess.run([*PRODG, "grafana-alerts", str(RULES)], capture_output=True, text=True, check=True,
                          cwd=ROOT, timeout=60).stdout
    assert GRAFANA_RULES.read_text() == made, "regenerate with: prodg grafana-alerts " \
                                              "config/compose/prometheus/rules/prodg.yml > " + str(GRAFANA_RULES)
    prometheus = {r["alert"]: r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    grafana = {r["title"]: r for g in yaml.safe_load(made)["groups"] for r in g["rules"]}
    assert set(grafana) == set(prometheus) - {"ScrapeTargetDown"}  # the seed's TargetDown covers that one
    for name, rule in grafana.items():
        assert " ".join(str(prometheus[name]["expr"]).split()) in rule["data"][0]["model"]["expr"]
        assert rule["for"] == prometheus[name].get("for", "0s")


def test_the_dashboard_and_the_rules_read_only_metrics_the_exporter_serves():
    with dg.instance_for_test() as instance:
        served = {f.name + ("_info" if f.type == "info" else "") for f in
                  InstanceCollector(instance, lambda: Graph()).collect()}
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [r["data"][0]["model"]["expr"] for g in yaml.safe_load(GRAFANA_RULES.read_text())["groups"]
              for r in g["rules"]]
    named = {m for e in exprs for m in re.findall(r"\bprodg_[a-z_]+", e)}
    assert named and named <= served, named - served
    # the mainframe at a glance: services, deploys, backups, drills
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    assert all(word in titles for word in ("services", "deploy", "backup", "drill"))


@pytest.mark.parametrize("rel, old, new, field, fragment", [
    ("alerting/notificationpolicies.yml", "    receiver: telegram-ops", "    receiver: telegram-opz",
     "policies[0].receiver", "names contact point 'telegram-opz'"),
    ("alerting/contactpoints.yml", "          chatid: ${TELEGRAM_CHAT_ID}\n", "",
     "contactPoints[0].receivers[0].settings", "needs chatid"),
    ("alerting/prodg.yml", "  - uid: prodg-exporter-down\n    title: ProdgExporterDown\n    condition: C",
     "  - uid: prodg-exporter-down\n    title: ProdgExporterDown\n    condition: D",
     "groups[0].rules[0].condition", "names query 'D'"),
    ("alerting/rules.yml", "            datasourceUid: prometheus\n", "            datasourceUid: prom\n",
     "groups[0].rules[0].data[0].datasourceUid", "names datasource 'prom'"),
    ("alerting/rules.yml", "        for: 5m", "        for: five minutes", "groups[0].rules[0].for", "not a duration"),
    ("dashboards/prodg.yml", "      path: /etc/grafana/provisioning/dashboards",
     "      path: /var/lib/grafana/dashboards", "providers[0].options.path", "inside /etc/grafana/provisioning"),
    ("datasources/prometheus.yml", "    uid: prometheus", "    uid: loki", "datasources[0].uid", "used twice"),
])
def test_a_broken_provisioning_file_is_a_located_error(tmp_path, rel, old, new, field, fragment):
    root = copy_config(tmp_path)
    text = edit(root, f"{PROVISIONING}/{rel}", old, new,
                count=(root / PROVISIONING / rel).read_text().count(old)).decode()
    errors = [e for e in validate(DirTree(root, "config"), BUNDLED_ENV) if e.field == field and fragment in e.message]
    assert len(errors) >= 1, validate(DirTree(root, "config"), BUNDLED_ENV)
    assert errors[0].file == f"config/{PROVISIONING}/{rel}"
    if new:
        assert errors[0].line == line_of(text, new.strip().splitlines()[-1])


def test_a_dashboard_on_an_unknown_datasource_or_not_json_is_a_located_error(tmp_path):
    root = copy_config(tmp_path)
    edit(root, f"{PROVISIONING}/dashboards/mainframe.json", '"uid": "prometheus"', '"uid": "prom"', count=18)
    errors = validate(DirTree(root, "config"), BUNDLED_ENV)
    assert any(e.field == "panels[0].datasource.uid" and "'prom'" in e.message for e in errors)
    (root / PROVISIONING / "dashboards" / "broken.json").write_text('{\n  "uid": "x",\n  "title": \n}\n')
    errors = validate(DirTree(root, "config"), BUNDLED_ENV)
    assert any(e.file.endswith("dashboards/broken.json") and e.line == 4 and "is not JSON" in e.message
               for e in errors)
