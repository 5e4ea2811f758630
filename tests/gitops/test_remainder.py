"""What a failed dependency leaves undeployed is deployed anyway, under `dagster dev` with its real daemon: on a
machine whose registry does not serve node-exporter's image, the git sensor's first run fails at node-exporter and
Dagster skips Prometheus (ordered after it); the next tick deploys Prometheus alone in a run of its own, tagged with
the commit and the failed run it completes (its targets check red: node-exporter is not there to scrape).
node-exporter stays failed — not faked, not retried."""

from __future__ import annotations

import time
import uuid

import pytest

from prodg_assets.contract import REMAINDER_TAG

from ..conftest import make_testbed
from ..dagster_dev import dagster_dev

pytestmark = pytest.mark.docker


def test_a_service_whose_image_is_missing_does_not_keep_its_dependents_from_deploying(tmp_path, docker_client):
    bed = make_testbed(str(tmp_path), docker_client, f"prodgm{uuid.uuid4().hex[:8]}")
    bed.edit("compose/docker-compose.yml", "image: prom/node-exporter:latest", "image: prom/node-exporter:not-pushed")
    head = bed.commit("node-exporter from a tag the registry does not hold")
    with dagster_dev(tmp_path, bed) as dagster:
        def two_finished():
            runs = dagster.runs_for(head)
            return runs if len(runs) == 2 and all(r["status"] in ("SUCCESS", "FAILURE") for r in runs) else None

        runs = dagster.wait("the first run and the run of its rest", two_finished, budget=900)
        tags = [{t["key"]: t["value"] for t in r["tags"]} for r in runs]
        first = next(r for r, t in zip(runs, tags) if REMAINDER_TAG not in t)
        rest, rest_tags = next((r, t) for r, t in zip(runs, tags) if REMAINDER_TAG in t)
        assert first["status"] == "FAILURE"
        # why it failed: node-exporter's image, named, is not in the registry
        failed = dagster.step_failures(first["runId"])
        assert set(failed) == {"node_exporter"}, failed
        assert "prom/node-exporter:not-pushed" in failed["node_exporter"], failed
        assert rest_tags[REMAINDER_TAG] == first["runId"]
        assert rest_tags["prodg/commit"] == head
        assert "node_exporter" in rest_tags["prodg/reason"]
        assert [a["path"] for a in rest["assetSelection"]] == [["prometheus"]]
        steps = dagster.gql("""query($id: ID!) { runOrError(runId: $id) { ... on Run {
              stepStats { stepKey status } } } }""", id=rest["runId"])["runOrError"]["stepStats"]
        status = {s["stepKey"]: s["status"] for s in steps}
        assert status["prometheus"] == "SUCCESS", status
        # red, and rightly: the target it scrapes on node-exporter is down
        assert {k for k, v in status.items() if v == "FAILURE"} <= {"prometheus_prometheus_targets_up"}, status
        live = bed.containers()
        assert live["prometheus"].labels["prodg.commit"] == head
        assert live["prometheus"].attrs["State"]["Health"]["Status"] == "healthy"
        assert "node-exporter" not in live
        # not retried: the sensor ticks on (two more ticks after the rest's run ended) and launches nothing more
        ended = time.time()  # both runs have ended by now
        dagster.wait("two more ticks of the git sensor", lambda: dagster.sensor_ticks_since(ended) >= 2, budget=300)
        assert len(dagster.runs_for(head)) == 2
        assert "node-exporter" not in bed.containers()
