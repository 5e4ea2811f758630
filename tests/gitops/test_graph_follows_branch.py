"""Git is the whole truth, under `dagster dev` with its real daemon and webserver: a push that adds a service reloads
the code location by itself (no click), and the next tick deploys exactly the new service, tagged with its commit;
a push that removes it takes its asset out of the graph and reports the container (deploy.prune is off); a push that
changes a setting the definitions are built from (the drift schedule) is in effect after the reload."""

from __future__ import annotations

import uuid

import pytest

from ..conftest import make_testbed
from ..dagster_dev import dagster_dev

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


@pytest.fixture
def dev(tmp_path, docker_client):
    bed = make_testbed(str(tmp_path), docker_client, f"prodgg{uuid.uuid4().hex[:8]}")
    with dagster_dev(tmp_path, bed) as dagster:
        yield bed, dagster


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
    assert "cache2" in bed.containers()  # deploy.prune is off: reported, not removed
    mats, checks = dagster.run_outcomes(run["runId"])
    assert mats["retired_services"]["retired"] == "cache2" and mats["retired_services"]["removed"] == "none"
    assert checks["no_retired_services"] is False

    bed.edit("prodg.yaml", "  stop_timeout_s: 5\n", "  stop_timeout_s: 5\n  drift_schedule: \"*/7 * * * *\"\n")
    bed.commit("drift every 7 minutes")
    dagster.wait("the new drift schedule", lambda: dagster.schedule_crons().get("drift_schedule") == "*/7 * * * *")
