"""What a container mounts from the config is an immutable tree per content: a run of an older or superseded commit
never rewrites a file a live container mounts, a commit that leaves a file alone leaves its container alone, and
trees no container uses are removed."""

import os
import time

import pytest

from tests.conftest import Testbed
from tests.layers.test_converge import materializations

pytestmark = pytest.mark.docker

TARGET = "/etc/prometheus/prometheus.yml"


def mount_source(bed: Testbed, service: str, target: str) -> str:
    attrs = bed.client.api.inspect_container(f"{bed.project}-{service}")
    return next(m["Source"] for m in attrs["Mounts"] if m["Destination"] == target)


def tree_of(bed: Testbed, source: str) -> str:
    """The content tree (a folder right under the deploy root) a bind source lies in."""
    root = bed.env["PRODG_DEPLOY_ROOT"]
    return os.path.join(root, os.path.relpath(source, root).split(os.sep)[0])


def seen(path: str) -> tuple[bytes, int]:
    with open(path, "rb") as fh:
        return fh.read(), os.stat(path).st_ino


def test_trees_are_immutable_shared_by_unchanged_content_and_collected_when_unused(testbed: Testbed):
    bed = testbed
    assert bed.materialize().success
    first = bed.commits[-1]
    source_a = mount_source(bed, "prometheus", TARGET)
    with open(os.path.join(bed.repo, "config", "compose", "prometheus", "prometheus.yml"), "a") as fh:
        fh.write("# scraped as before, with a comment\n")
    second = bed.commit("prometheus: a comment")
    assert materializations(bed.materialize(selection="prometheus"))["prometheus"]["action"] == "recreated"
    source_b = mount_source(bed, "prometheus", TARGET)
    assert tree_of(bed, source_b) != tree_of(bed, source_a)
    assert seen(source_b)[0].endswith(b"# scraped as before, with a comment\n")
    before, container = seen(source_b), bed.containers()["prometheus"].id

    # the run of the older commit (pushed late, or retried) is superseded and writes nothing a container mounts
    late = bed.materialize(selection="prometheus", commit=first)
    assert late.success and materializations(late)["prometheus"]["action"] == "superseded"
    assert seen(source_b) == before and bed.containers()["prometheus"].id == container

    # a commit that does not touch prometheus.yml keeps its mount, and its container
    with open(os.path.join(bed.repo, "config", "NOTES.md"), "w") as fh:
        fh.write("an unrelated file\n")
    bed.commit("notes")
    same = bed.materialize(selection="prometheus")
    assert materializations(same)["prometheus"]["action"] == "unchanged"
    assert mount_source(bed, "prometheus", TARGET) == source_b and bed.containers()["prometheus"].id == container

    # the first commit's tree is mounted by no container: once no run has wanted it for the grace period (aged
    # here by its timestamp), the next deploy removes it; the tree a container still mounts stays
    old = time.time() - 2 * 3600
    os.utime(tree_of(bed, source_a), (old, old))
    assert second != bed.commits[-1]
    with open(os.path.join(bed.repo, "config", "compose", "prometheus", "prometheus.yml"), "a") as fh:
        fh.write("# and another comment\n")
    bed.commit("prometheus: another comment")
    assert bed.materialize(selection="prometheus").success
    assert not os.path.exists(tree_of(bed, source_a))
    assert os.path.exists(tree_of(bed, source_b))  # no container mounts it now, but a run wanted it minutes ago
    assert os.path.isfile(mount_source(bed, "prometheus", TARGET))
