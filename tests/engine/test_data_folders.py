"""The hand-over of data folders, on a real filesystem (as root, as prodg runs): what is under `host.data_root` is
given to the service's user — all of it, also what a root container wrote after an earlier hand-over — and nothing
outside it that already exists, even through a symlink; a folder that cannot be handed over fails naming it."""

import os

import pytest

from prodg_assets.desired.model import Mount, ServiceSpec
from prodg_assets.engine.data_folders import DataFolderError, prepare_data_folders

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="owning files to another user needs root")


def spec(*mounts: Mount, user: str = "999:1000") -> ServiceSpec:
    return ServiceSpec("redis", "redis", "data_stores", "redis:7-alpine", volumes=mounts, user=user)


def owners(top: str) -> set[tuple[int, int]]:
    found = {os.lstat(top)[4:6]}
    for folder, dirs, files in os.walk(top):
        found |= {os.lstat(os.path.join(folder, n))[4:6] for n in dirs + files}
    return found


def test_what_a_root_container_wrote_after_the_hand_over_is_handed_over_too(tmp_path):
    root = tmp_path / "data"
    data = root / "redis"
    said: list[str] = []
    assert prepare_data_folders(spec(Mount("bind", str(data), "/data")), str(root), said.append) == [str(data)]
    assert owners(str(data)) == {(999, 1000)} and "made and handed to uid 999, gid 1000" in said[0]
    (data / "appendonly.aof").write_text("written by a rolled-back root container")  # this process is root
    (data / "nested").mkdir()
    (data / "nested" / "dump.rdb").write_text("x")
    assert prepare_data_folders(spec(Mount("bind", str(data), "/data")), str(root), said.append) == [str(data)]
    assert owners(str(data)) == {(999, 1000)} and "(the service's user; 3 entries)" in said[1]
    assert prepare_data_folders(spec(Mount("bind", str(data), "/data")), str(root), said.append) == []


def test_nothing_outside_the_data_root_that_exists_is_touched_even_through_a_symlink(tmp_path):
    root, outside = tmp_path / "data", tmp_path / "var-log"
    root.mkdir()
    outside.mkdir()
    (outside / "syslog").write_text("the host's")
    (root / "redis").symlink_to(outside)
    mounts = (Mount("bind", str(root / "redis"), "/data"), Mount("bind", str(outside), "/var/log"))
    assert prepare_data_folders(spec(*mounts), str(root), lambda _: None) == []
    assert owners(str(outside)) == {(0, 0)}


def test_a_folder_that_cannot_be_made_fails_naming_it(tmp_path):
    blocker = tmp_path / "data"
    blocker.write_text("a file where the data root's folder should be")
    with pytest.raises(DataFolderError, match=r"redis: .*data/redis could not be made: Not a directory"):
        prepare_data_folders(spec(Mount("bind", str(blocker / "redis"), "/data")), str(blocker), lambda _: None)
