"""The trust tiers, enforced: on the tailnet, Headscale's policy written from prodg.yaml, applied through Headscale's
API (its stand-in here, at a configurable base URL), compared on the exposure family's clock and put back after an
edit by hand; on the Engine, what only T1 may hold reaching the container, and a T2 service running as root named by
the root check."""

import json
import os

import dagster as dg
import pytest

from tests.conftest import TEST_SECRETS
from tests.layers.test_converge import materializations
from tests.standins.headscale import HeadscaleStandIn, hujson_value

TAILNET = """
integrations:
  headscale:
    api_base_url: ${HEADSCALE_API_URL}
    api_key_secret: HEADSCALE_API_KEY

tailnet:
  operators: [mitch]
  grants:
    - {tier: T3, service: node-exporter}
"""


@pytest.fixture
def bed(own_bed):
    return own_bed


def with_tailnet(bed) -> None:
    """The bed's prodg.yaml with a tailnet section granting T3 nodes node-exporter, published on the host's tailnet
    address (a data-only address here: nothing in these tests starts node-exporter)."""
    bed.edit("prodg.yaml", "variables:\n", "variables:\n  HEADSCALE_API_URL: http://127.0.0.1:9\n")
    bed.edit("prodg.yaml", "  hostname: testbed.local\n", "  hostname: testbed.local\n  tailscale_ip: 100.64.0.1\n"
             "  ufw: {active: true, allow: [22/tcp]}\n")
    bed.edit("compose/docker-compose.yml", "    user: \"65534\" # nobody, as upstream's prom/node-exporter\n",
             "    user: \"65534\" # nobody, as upstream's prom/node-exporter\n    ports: [100.64.0.1:9100:9100]\n")
    with open(os.path.join(bed.repo, "config", "prodg.yaml"), "a") as fh:
        fh.write(TAILNET)
    bed.commit("tailnet: operators and a T3 grant")


def run_check(bed, asset: str, name: str) -> tuple[bool, dict]:
    os.environ.update(bed.env)
    job = bed.defs().resolve_implicit_global_asset_job_def().get_subset(
        asset_selection=set(), asset_check_selection={dg.AssetCheckKey(dg.AssetKey(asset), name)})
    result = job.execute_in_process(tags={"prodg/commit": bed.commits[-1]})
    evaluation = [e.asset_check_evaluation_data for e in result.all_events
                  if e.event_type_value == "ASSET_CHECK_EVALUATION"][0]
    return evaluation.passed, {k: getattr(v, "value", v) for k, v in evaluation.metadata.items()}


def test_tailnet_policy_is_applied_checked_and_put_back_after_an_edit_by_hand(bed):
    with_tailnet(bed)
    with HeadscaleStandIn(TEST_SECRETS["HEADSCALE_API_KEY"], []) as hs:
        bed.env["HEADSCALE_API_URL"] = hs.url
        passed, meta = run_check(bed, "tailnet", "tailnet_policy")
        assert passed is False and "Headscale holds no policy" in meta["problems"]  # before the first apply

        os.environ.update(bed.env)
        first = bed.materialize(selection="tailnet")
        assert first.success and materializations(first)["tailnet"]["policy"] == "applied"
        live = hujson_value(hs.policy)
        # T1 (the operators and tag:t1) reach everything; T3 reaches node-exporter's tailnet port and nothing else
        assert live["groups"] == {"group:operators": ["mitch"]}
        assert live["acls"] == [{"action": "accept", "src": ["group:operators", "tag:t1"], "dst": ["*:*"]},
                                {"action": "accept", "src": ["tag:t3"], "dst": ["mainframe:9100"]}]
        assert live["hosts"] == {"mainframe": "100.64.0.1/32"}
        t3 = next(t for t in live["tests"] if t["src"] == "tag:t3")
        assert t3["accept"] == ["mainframe:9100"]
        assert {"mainframe:22", "tag:t1:22", "tag:t3:22"} <= set(t3["deny"])
        assert run_check(bed, "tailnet", "tailnet_policy")[0] is True

        again = bed.materialize(selection="tailnet")  # the same policy: not written again
        assert materializations(again)["tailnet"]["policy"] == "unchanged"
        assert hs.calls.count(("PUT", "/api/v1/policy")) == 1

        # someone opens the tailnet by hand (`headscale policy set`): the check names it, the asset puts it back
        opened = dict(live, acls=live["acls"] + [{"action": "accept", "src": ["tag:t3"], "dst": ["*:*"]}])
        hs.policy = "// opened for a test run\n" + json.dumps(opened)
        passed, meta = run_check(bed, "tailnet", "tailnet_policy")
        assert passed is False
        assert "differs from prodg's in acls" in meta["problems"]
        assert "tag:t3 → mainframe:22 is accepted, the test says deny" in meta["problems"]
        back = bed.materialize(selection="tailnet")
        assert materializations(back)["tailnet"]["policy"] == "replaced"
        assert hujson_value(hs.policy) == live
        assert run_check(bed, "tailnet", "tailnet_policy")[0] is True


def test_a_headscale_that_keeps_its_policy_in_a_file_fails_the_apply_saying_so(bed):
    with_tailnet(bed)
    with HeadscaleStandIn(TEST_SECRETS["HEADSCALE_API_KEY"], [], mode="file") as hs:
        bed.env["HEADSCALE_API_URL"] = hs.url
        os.environ.update(bed.env)
        result = bed.materialize(selection="tailnet")
        assert not result.success
        error = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"][0] \
            .event_specific_data.error.to_string()
        assert "Headscale refused the policy (HTTP 500)" in error and "policy.mode `database`" in error
        assert TEST_SECRETS["HEADSCALE_API_KEY"] not in error


def test_t1_privileges_reach_the_engine_and_a_t2_root_process_is_named(bed):
    os.environ.update(bed.env)
    # node-exporter as a T1 service holding a capability: the container gets it
    bed.edit("compose/docker-compose.yml", "    x-prodg: {layer: observability, internal_ports: [9100]}",
             "    cap_add: [NET_ADMIN]\n    pid: host\n"
             "    x-prodg: {layer: observability, trust_tier: T1, internal_ports: [9100]}")
    bed.commit("node-exporter: T1, NET_ADMIN, the host's process table")
    assert bed.materialize(selection="docker_network,node_exporter").success
    host_config = bed.containers()["node-exporter"].attrs["HostConfig"]
    assert host_config["CapAdd"] == ["NET_ADMIN"] and host_config["PidMode"] == "host"
    assert host_config["Privileged"] is False
    # back to T2, as root: the root check names it; as nobody again: green
    bed.edit("compose/docker-compose.yml", "    cap_add: [NET_ADMIN]\n    pid: host\n"
             "    x-prodg: {layer: observability, trust_tier: T1, internal_ports: [9100]}",
             "    x-prodg: {layer: observability, internal_ports: [9100]}")
    bed.edit("compose/docker-compose.yml", "    user: \"65534\" # nobody", "    user: \"0\" # root")
    bed.commit("node-exporter: T2, as root")
    assert bed.materialize(selection="docker_network,node_exporter").success
    assert bed.containers()["node-exporter"].attrs["HostConfig"]["CapAdd"] is None
    passed, meta = run_check(bed, "host_baseline", "no_root_below_t1")
    assert passed is False and "node-exporter (T2): 1 process(es) as root" in meta["as_root"]
    bed.edit("compose/docker-compose.yml", "    user: \"0\" # root", "    user: \"65534\" # nobody")
    bed.commit("node-exporter: as nobody")
    assert bed.materialize(selection="docker_network,node_exporter").success
    passed, meta = run_check(bed, "host_baseline", "no_root_below_t1")
    assert passed is True and meta["as_root"] == "none"
