"""DNS records converged through Cloudflare's API and the tailnet read through Headscale's, both at configurable base
URLs served here by stand-ins that speak those protocols."""

import os
import uuid

import dagster as dg
import pytest

from tests.conftest import TEST_SECRETS, make_testbed
from tests.standins.cloudflare import CloudflareStandIn
from tests.standins.headscale import HeadscaleStandIn

HOST = "203.0.113.10"


# Added to the test stack's prodg.yaml here: the rest of the suite runs without these stand-ins.
DNS_AND_TAILNET = """
dns:
  provider: cloudflare
  zone: prodg.studio
  api_base_url: ${CLOUDFLARE_API_URL}
  api_token_secret: CLOUDFLARE_API_TOKEN
  require_dns_only: true
  records:
    # 203.0.113.0/24 is TEST-NET-3: data only, never contacted
    - {name: headscale.prodg.studio, type: A, content: 203.0.113.10, proxied: false}
    - {name: "*.mainframe.prodg.studio", type: A, content: 203.0.113.10, proxied: false}

integrations:
  headscale:
    api_base_url: ${HEADSCALE_API_URL}
    api_key_secret: HEADSCALE_API_KEY
"""


@pytest.fixture
def bed(tmp_path, docker_client):
    bed = make_testbed(str(tmp_path), docker_client, f"prodgn{uuid.uuid4().hex[:8]}")
    bed.edit("prodg.yaml", "variables:\n", "variables:\n  CLOUDFLARE_API_URL: http://127.0.0.1:9\n"
             "  HEADSCALE_API_URL: http://127.0.0.1:9\n")
    with open(os.path.join(bed.repo, "config", "prodg.yaml"), "a") as fh:
        fh.write(DNS_AND_TAILNET)
    bed.commit("DNS and tailnet")
    old = dict(os.environ)
    yield bed
    os.environ.clear()
    os.environ.update(old)


def materialize(bed, selection: str) -> dg.ExecuteInProcessResult:
    os.environ.update(bed.env)
    return bed.materialize(selection=selection)


def checks(result) -> dict:
    return {e.asset_check_evaluation_data.check_name: (e.asset_check_evaluation_data.passed,
                                                       e.asset_check_evaluation_data.metadata)
            for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"}


def test_dns_records_are_created_and_corrected_to_dns_only(bed):
    live = [{"type": "A", "name": "*.mainframe.prodg.studio", "content": "198.51.100.7", "proxied": True},
            {"type": "TXT", "name": "prodg.studio", "content": "v=spf1 -all"}]
    with CloudflareStandIn(TEST_SECRETS["CLOUDFLARE_API_TOKEN"], "prodg.studio", live) as cf:
        bed.env["CLOUDFLARE_API_URL"] = cf.url
        result = materialize(bed, "dns_records")
        assert result.success
        records = {(r["name"], r["type"]): r for r in cf.records}
        assert records[("headscale.prodg.studio", "A")]["content"] == HOST
        assert records[("*.mainframe.prodg.studio", "A")]["content"] == HOST
        assert all(not r["proxied"] for r in records.values())
        assert records[("prodg.studio", "TXT")]["content"] == "v=spf1 -all"  # not ours: left alone
        assert checks(result)["dns_only_and_pointing_at_host"][0] is True
        # someone turns the orange cloud back on: the check names it
        records[("headscale.prodg.studio", "A")]["proxied"] = True
        check = checks(bed.materialize(selection="dns_records"))
        assert check["dns_only_and_pointing_at_host"][0] is True  # the asset corrected it again before the check
        records[("headscale.prodg.studio", "A")]["proxied"] = True
        job = bed.defs().resolve_implicit_global_asset_job_def().get_subset(
            asset_selection=set(), asset_check_selection={dg.AssetCheckKey(dg.AssetKey("dns_records"),
                                                                           "dns_only_and_pointing_at_host")})
        only_check = checks(job.execute_in_process(tags={"prodg/commit": bed.commits[-1]}))
        passed, meta = only_check["dns_only_and_pointing_at_host"]
        assert passed is False and "headscale.prodg.studio is proxied" in meta["problems"].value


def test_wrong_cloudflare_token_is_a_clear_failure_without_the_token(bed):
    with CloudflareStandIn("another-token", "prodg.studio", []) as cf:
        bed.env["CLOUDFLARE_API_URL"] = cf.url
        result = materialize(bed, "dns_records")
        assert not result.success
        failure = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"][0]
        error = failure.event_specific_data.error.to_string()
        assert "Cloudflare API GET /zones: Authentication error" in error
        assert TEST_SECRETS["CLOUDFLARE_API_TOKEN"] not in error


def test_tailnet_lists_nodes_with_last_seen_and_the_check_fails_when_headscale_is_down(bed):
    nodes = [{"id": "1", "name": "mitch-laptop", "givenName": "mitch-laptop", "ipAddresses": ["100.64.0.2"],
              "online": True, "lastSeen": "2026-11-27T06:59:12Z"},
             {"id": "2", "name": "mainframe", "givenName": "mainframe", "ipAddresses": ["100.64.0.1"],
              "online": False, "lastSeen": "2026-11-26T22:10:00Z"}]
    with HeadscaleStandIn(TEST_SECRETS["HEADSCALE_API_KEY"], nodes) as hs:
        bed.env["HEADSCALE_API_URL"] = hs.url
        result = materialize(bed, "tailnet")
        assert result.success
        meta = [e.event_specific_data.materialization.metadata for e in result.all_events
                if e.event_type_value == "ASSET_MATERIALIZATION"][0]
        assert meta["nodes"].value == 2 and meta["online"].value == 1
        assert {n["last_seen"] for n in meta["node_list"].value} == {"2026-11-27T06:59:12Z", "2026-11-26T22:10:00Z"}
        passed, cmeta = checks(result)["headscale_answers"]
        assert passed and "mitch-laptop: last seen 2026-11-27T06:59:12Z" in cmeta["nodes"].value
    bed.env["HEADSCALE_API_URL"] = hs.url  # the stand-in is stopped now
    down = materialize(bed, "tailnet")
    assert not down.success
