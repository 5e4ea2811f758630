"""The Headscale policy prodg writes from prodg.yaml's `tailnet:` section: who reaches what, its tests block holding
for every tier, the policy a broken acl would make failing its own tests, and a grant's change reaching the
`tailnet` asset through the commit's impact."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prodg_assets.desired import load_desired_state
from prodg_assets.desired.tailnet import failing_tests, policy, policy_text, standard
from prodg_assets.gitops.impact import impacted_assets

from .conftest import BUNDLED_ENV, COMPOSE_REL, PRODG_REL, edit, tree

GRANT_MINIO = ("  grants: []", "  grants:\n    - {tier: T3, service: minio}")
MINIO_ON_TAILNET = ("      - 127.0.0.1:9000:9000", "      - 100.64.0.1:9000:9000")


def load(root: Path):
    return load_desired_state(tree(root), BUNDLED_ENV)


def test_bundled_policy_gives_the_operators_everything_and_the_other_tiers_nothing(config_copy: Path):
    state = load(config_copy)
    value = policy(state.settings, state.services)
    assert value["groups"] == {"group:operators": ["mitch"]}
    assert value["acls"] == [{"action": "accept", "src": ["group:operators", "tag:t1"], "dst": ["*:*"]}]
    assert failing_tests(value) == []
    t3 = next(t for t in value["tests"] if t["src"] == "tag:t3")
    # every port the host answers on beyond loopback (the firewall's and the wildcard publications) denied to T3
    assert set(t3["deny"]) >= {"mainframe:22", "mainframe:80", "mainframe:443", "mainframe:8080", "mainframe:3478"}
    assert "accept" not in t3


def test_a_grant_opens_exactly_the_granted_ports_and_the_tests_catch_a_broader_acl(config_copy: Path):
    edit(config_copy, COMPOSE_REL, *MINIO_ON_TAILNET)
    edit(config_copy, PRODG_REL, *GRANT_MINIO)
    state = load(config_copy)
    value = policy(state.settings, state.services)
    assert {"action": "accept", "src": ["tag:t3"], "dst": ["mainframe:9000"]} in value["acls"]
    assert failing_tests(value) == []
    broken = dict(value, acls=value["acls"][:1] + [{"action": "accept", "src": ["tag:t3"], "dst": ["mainframe:*"]}])
    failures = failing_tests(broken)
    assert "tag:t3 → mainframe:443 is accepted, the test says deny" in failures
    assert "tag:t3 → mainframe:22 is accepted, the test says deny" in failures
    closed = dict(value, acls=value["acls"][:1])
    assert failing_tests(closed) == ["tag:t3 → mainframe:9000 is denied, the test says accept"]


def test_the_printed_policy_is_hujson_that_means_the_policy(config_copy: Path):
    env = {**os.environ, **BUNDLED_ENV}
    out = subprocess.run([sys.executable, "-m", "prodg_assets.cli", "tailnet-policy", str(config_copy)], env=env,
                         capture_output=True, text=True, check=True).stdout
    state = load(config_copy)
    assert out.startswith("// Headscale's policy, written by prodg")
    assert standard(out) == policy(state.settings, state.services)
    assert out == policy_text(policy(state.settings, state.services))


def test_hujson_comments_and_trailing_commas_are_read_as_headscale_reads_them():
    text = '// top\n{"acls": [ /* inline */ {"action": "accept", "src": ["a//b"], "dst": ["*:*"],},],}\n'
    assert standard(text) == {"acls": [{"action": "accept", "src": ["a//b"], "dst": ["*:*"]}]}
    assert standard("{not json") is None


def test_a_grant_or_a_granted_port_changing_selects_the_tailnet_asset(config_copy: Path, tmp_path: Path):
    edit(config_copy, COMPOSE_REL, *MINIO_ON_TAILNET)
    before = load(config_copy)
    edit(config_copy, PRODG_REL, *GRANT_MINIO)
    granted = load(config_copy)
    assets, reasons = impacted_assets(before, granted)
    assert assets == {"tailnet"} and reasons == ["prodg.yaml tailnet changed"]
    edit(config_copy, COMPOSE_REL, "      - 100.64.0.1:9000:9000", "      - 100.64.0.1:9009:9000")
    moved = load(config_copy)
    assets, reasons = impacted_assets(granted, moved)
    assert assets == {"tailnet", "minio"}
    assert "the tailnet policy changed (a granted service's ports)" in reasons
