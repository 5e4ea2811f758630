"""The host gate never blocks recovery: a host that differs from its description (OS, kernel, UFW) is reported red
and the services still deploy; only a condition that makes a deploy unsafe (free disk below the minimum) blocks."""

from __future__ import annotations

import pytest

from ..conftest import Testbed
from .test_converge import check_problems, check_results

pytestmark = pytest.mark.docker
SELECTION = "host_baseline,docker_network,redis"


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
