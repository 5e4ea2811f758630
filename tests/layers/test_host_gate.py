"""The host gate never blocks recovery: a host that differs from its description (OS, kernel, UFW) is reported red
and the services still deploy; only a condition that makes a deploy unsafe (free disk below the minimum) blocks."""

from __future__ import annotations

import os

import dagster as dg
import pytest

from prodg_assets.contract import CHECK_NOTIFIER
from tests.standins.telegram import TelegramStandIn

from ..conftest import TEST_SECRETS, Testbed
from .test_converge import check_problems, check_results

pytestmark = pytest.mark.docker
SELECTION = "host_baseline,docker_network,redis"


@pytest.fixture(autouse=True)
def at_baseline(testbed: Testbed):
    """Each test starts from the bed's first commit (what a test committed is put back afterwards)."""
    yield
    testbed.reset_to(testbed.commits[0])


def test_a_full_disk_blocks_the_deploy_and_a_foreign_os_does_not(testbed: Testbed):
    bed = testbed
    bed.edit("prodg.yaml", "  min_free_disk_gb: 1\n", "  min_free_disk_gb: 1000000\n")
    bed.commit("the host's disk is too full to deploy onto")
    blocked = bed.materialize(selection=SELECTION)
    checks = check_results(blocked)
    assert checks["host_safe_to_deploy"] is False and checks["host_conforms"] is True
    assert "below 1,000,000 GB (prodg.yaml host.min_free_disk_gb)" in check_problems(blocked)["host_safe_to_deploy"]
    assert not blocked.success and "redis" not in bed.containers()  # nothing was deployed onto the full disk

    bed.edit("prodg.yaml", "  min_free_disk_gb: 1000000\n", "  min_free_disk_gb: 1\n")
    bed.edit("prodg.yaml", "  os: Debian\n", "  os: Ubuntu 24.04\n")
    bed.commit("the description says Ubuntu; this host runs Debian")
    drifted = bed.materialize(selection=SELECTION)
    checks = check_results(drifted)
    assert checks["host_conforms"] is False and checks["host_safe_to_deploy"] is True
    assert "expected 'Ubuntu 24.04' (prodg.yaml host.os)" in check_problems(drifted)["host_conforms"]
    assert drifted.success
    redis = bed.containers()["redis"]
    assert redis.status == "running" and redis.labels["prodg.commit"] == bed.commits[-1]


def notifier_tick(bed: Testbed, instance: dg.DagsterInstance, cursor: str | None) -> str | None:
    """One tick of the check notifier, as the daemon runs it; its new cursor."""
    defs = bed.defs()
    sensor = defs.resolve_sensor_def(CHECK_NOTIFIER)
    resources = {k: defs.resources[k] for k in ("telegram", "secrets")}
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as ctx:
        return sensor.evaluate_tick(ctx).cursor


def test_a_red_host_check_is_told_once_and_so_is_its_return_to_green(testbed: Testbed):
    bed = testbed
    old_url = bed.env.get("TELEGRAM_API_URL")
    with TelegramStandIn(TEST_SECRETS["TELEGRAM_BOT_TOKEN"]) as telegram, dg.instance_for_test() as instance:
        os.environ["TELEGRAM_API_URL"] = bed.env["TELEGRAM_API_URL"] = telegram.url
        try:
            bed.edit("prodg.yaml", "    on: [deploy_failure, backup_success, backup_failure]\n",
                     "    on: [deploy_failure, backup_success, backup_failure, check]\n")
            bed.edit("prodg.yaml", "  os: Debian\n", "  os: Ubuntu 24.04\n")
            bed.commit("the description says Ubuntu; this host runs Debian; host checks are told to Telegram")
            cursor = notifier_tick(bed, instance, None)
            assert telegram.messages == []  # nothing evaluated yet, nothing to tell
            red = bed.materialize(selection="host_baseline", instance=instance)
            assert red.success and check_results(red)["host_conforms"] is False
            cursor = notifier_tick(bed, instance, cursor)
            (message,) = [m["text"] for m in telegram.messages]
            assert message.startswith("⚠️ host_baseline host_conforms is red")
            assert "expected 'Ubuntu 24.04' (prodg.yaml host.os)" in message and red.run_id in message
            assert not any(v in message for v in TEST_SECRETS.values())
            # evaluated red again with the same problems (the next deploy): nothing new to tell
            assert bed.materialize(selection="host_baseline", instance=instance).success
            cursor = notifier_tick(bed, instance, cursor)
            assert len(telegram.messages) == 1
            # the description fixed: green again, told once
            bed.edit("prodg.yaml", "  os: Ubuntu 24.04\n", "  os: Debian\n")
            bed.commit("the description says Debian")
            green = bed.materialize(selection="host_baseline", instance=instance)
            assert check_results(green)["host_conforms"] is True
            cursor = notifier_tick(bed, instance, cursor)
            notifier_tick(bed, instance, cursor)
            assert [m["text"].splitlines()[0].split(" (after ")[0] for m in telegram.messages] == [
                "⚠️ host_baseline host_conforms is red", "✅ host_baseline host_conforms is green again"]
        finally:
            for env in (os.environ, bed.env):
                if old_url is None:
                    env.pop("TELEGRAM_API_URL", None)
                else:
                    env["TELEGRAM_API_URL"] = old_url
