"""The alert rules in config/compose/prometheus/rules/, checked by the stack's own Prometheus tooling (promtool, from
Debian's `prometheus` package in the stand-in image): the rule files parse, the bundled prometheus.yml loads them, and
every rule fires exactly when its unit tests (tests/watch/prodg_rules.test.yml) say — and not before."""

from __future__ import annotations

import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROMETHEUS = os.path.join(ROOT, "config", "compose", "prometheus")
IMAGE = "prodg/prometheus:bookworm"


def promtool(docker_client, *args: str, token_file: str = "") -> str:
    """promtool in the stand-in's image, the bundled Prometheus files mounted where the stack's Prometheus has them
    (and the operator's token file for the prodg job, when given)."""
    token = {token_file: {"bind": "/prometheus/prodg-metrics-token", "mode": "ro"}} if token_file else {}
    container = docker_client.containers.run(
        IMAGE, list(args), entrypoint=["promtool"], detach=True, network_mode="none", volumes={**token,
            os.path.join(PROMETHEUS, "prometheus.yml"): {"bind": "/etc/prometheus/prometheus.yml", "mode": "ro"},
            os.path.join(PROMETHEUS, "rules"): {"bind": "/etc/prometheus/rules", "mode": "ro"},
            # the rules' unit tests name their rule files as /rules/…
            os.path.join(PROMETHEUS, "rules") + "/": {"bind": "/rules", "mode": "ro"},
            os.path.dirname(os.path.abspath(__file__)): {"bind": "/tests", "mode": "ro"}})
    try:
        status = container.wait(timeout=120)["StatusCode"]
        out = container.logs().decode()
    finally:
        container.remove(force=True)
    assert status == 0, f"promtool {' '.join(args)}:\n{out}"
    return out


def test_the_rules_parse_and_the_bundled_prometheus_loads_them(docker_client, tmp_path):
    out = promtool(docker_client, "check", "rules", "/etc/prometheus/rules/prodg.yml")
    assert "SUCCESS: 7 rules found" in out, out
    token = tmp_path / "prodg-metrics-token"
    token.write_text("a-token\n")
    token.chmod(0o644)  # promtool runs as the image's user
    out = promtool(docker_client, "check", "config", "/etc/prometheus/prometheus.yml", token_file=str(token))
    assert "SUCCESS: 7 rules found" in out and "/etc/prometheus/rules/prodg.yml" in out, out


def test_every_rule_fires_when_its_unit_tests_say(docker_client):
    out = promtool(docker_client, "test", "rules", "/tests/prodg_rules.test.yml")
    assert "SUCCESS" in out, out
