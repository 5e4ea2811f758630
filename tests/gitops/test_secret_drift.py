"""Change detection covers what a container sees: a secret's value changed in the secrets source (the env file
changes, the commit does not) is drift on exactly the services that use it — the `in_sync` check names it without
showing the value, and self-heal recreates those services alone, which then hold the new value."""

from __future__ import annotations

import dagster as dg
import pytest

from ..conftest import Testbed
from .test_drift_and_notify import run_checks, schedule_request

pytestmark = pytest.mark.docker
NEW_PASSWORD = "redis-Rotated-Secret-5c1e77"


def test_a_rotated_secret_is_drift_on_its_service_and_self_heal_applies_it(testbed: Testbed):
    bed = testbed
    assert bed.materialize().success
    before = {s: c.id for s, c in bed.containers().items()}
    with open(bed.env["PRODG_SECRETS_FILE"]) as fh:
        lines = [ln for ln in fh.read().splitlines() if not ln.startswith("REDIS_PASSWORD=")]
    with open(bed.env["PRODG_SECRETS_FILE"], "w") as fh:
        fh.write("\n".join([*lines, f"REDIS_PASSWORD={NEW_PASSWORD}"]) + "\n")
    with dg.instance_for_test() as instance:
        (request,) = schedule_request(bed, instance).run_requests
        results = run_checks(bed, instance, request)
        passed, metadata = results["redis"]
        assert passed is False and "env" in metadata["fields"].value
        assert NEW_PASSWORD not in str({k: getattr(v, "value", v) for k, v in metadata.items()})
        assert all(ok for asset, (ok, _) in results.items() if asset != "redis")  # only the service that uses it

        bed.edit("prodg.yaml", "  stop_timeout_s: 5\n", "  stop_timeout_s: 5\n  self_heal: true\n")
        bed.commit("self-heal on")
        (heal,) = schedule_request(bed, instance).run_requests
        assert {k.to_user_string() for k in heal.asset_selection} == {"redis"}
        job = bed.defs().resolve_implicit_global_asset_job_def().get_subset(asset_selection=set(heal.asset_selection))
        assert job.execute_in_process(instance=instance, tags=heal.tags).success
    after = {s: c.id for s, c in bed.containers().items()}
    assert after["redis"] != before["redis"]
    assert {s: i for s, i in after.items() if s != "redis"} == {s: i for s, i in before.items() if s != "redis"}
    assert f"REDIS_PASSWORD={NEW_PASSWORD}" in bed.containers()["redis"].attrs["Config"]["Env"]
