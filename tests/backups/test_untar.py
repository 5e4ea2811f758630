"""Backup tars laid out by prodg itself (backups/restore/untar.py), through the public restore path: crafted tars —
built by tarfile, compressed, encrypted to a real age recipient and stored in an S3 stand-in like a real backup —
restored with restore_folder. A refused member fails the restore naming the member and why, leaves nothing where the
folder was to go (no half-written folder, no scratch sibling) and writes nothing outside it; an Engine-shaped tar comes
back with its owners, its hard link and its inside symlink, modes without group/other write or setuid/setgid/sticky
bits. A destination reached through a symlink (planted in a writable parent) is refused, and nothing is written where
the link points."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile

import pytest

from prodg_assets.agekeys import Recipient, read_identities
from prodg_assets.backups.restore.files import restore_file, restore_folder
from prodg_assets.backups.restore.postgres import RestoreRefused
from prodg_assets.backups.store.client import BackupStore
from prodg_assets.backups.store.download import RestoreFailed
from prodg_assets.backups.store.manifest import Manifest
from prodg_assets.backups.store.objects import StoreError
from prodg_assets.backups.store.stream import stream_backup
from tests.backups.conftest import STORE_KEY_ID, STORE_SECRET, s3
from tests.conftest import age_keygen

BUCKET = f"prodg-untar-{os.getpid()}"
OWNER = 472  # Grafana's uid: a service that must write its restored folder
MTIME = 1_764_000_000


def member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", mode: int = 0o644, link: str = "",
           uid: int = OWNER) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname, info.uid, info.gid, info.mtime = kind, mode, link, uid, uid, MTIME
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data if kind == tarfile.REGTYPE else None


def tar_of(*members) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


@pytest.fixture(scope="module")
def store(tmp_path_factory, store_server):
    """The backup tests' store (it checks keys: conftest's store_server) holding the crafted backups in a bucket of
    this module, and the operator's age identity they are encrypted to."""
    keys = tmp_path_factory.mktemp("untar-keys")
    recipient = Recipient.parse(age_keygen(str(keys / "operator.agekey")))
    s3(store_server.url, STORE_KEY_ID, STORE_SECRET).create_bucket(Bucket=BUCKET)
    backups = BackupStore(endpoint_url=store_server.url, region="us-east-1", bucket=BUCKET,
                          access_key_id=STORE_KEY_ID, secret_access_key=STORE_SECRET)
    yield backups, recipient, read_identities(str(keys / "operator.agekey"))


def backed_up(store, name: str, data: bytes, files: dict | None = None) -> Manifest:
    """`data` stored as a day's backup is (zstd, age), and its manifest."""
    backups, recipient, _ = store
    result = stream_backup(backups, f"untar/2026-11-26/{name}.tar.zst.age", iter([data]), recipients=[recipient])
    return Manifest("data", "2026-11-26", "2026-11-27T03:00:00+00:00", "c" * 40, "run tag", "test", "", "", "zstd",
                    (recipient.fingerprint,), (result.entry(),), extra={"files": files} if files is not None else {})


def realpath_overflow() -> list:
    """CVE-2025-4517's shape, which tarfile's `data` filter of Python before 3.11.13 lets out: a chain of short
    symlinks to 247-character folders whose real path outgrows PATH_MAX, where os.path.realpath stops resolving links
    and goes on lexically, so `escape` looks inside to the filter and points one folder above it to the kernel."""
    comp, steps, members, path = "d" * 247, "abcdefghijklmnop", [], ""
    for step in steps:
        members += [member(os.path.join(path, comp), tarfile.DIRTYPE, mode=0o755),
                    member(os.path.join(path, step), tarfile.SYMTYPE, link=comp)]
        path = os.path.join(path, comp)
    deep = os.path.join(*steps, "l" * 254)
    return members + [member(deep, tarfile.SYMTYPE, link="../" * len(steps)),
                      member("escape", tarfile.SYMTYPE, link=deep + "/.."),
                      member("escape/escaped.txt", data=b"written outside\n")]


GOOD = member("ok.txt", data=b"written before the bad member\n")  # first in each refused tar: nothing half-written
REFUSED = {
    "dotdot": ([member("../escaped.txt", data=b"x")], "'../escaped.txt' refused: a '..' component"),
    "absolute": ([member("/tmp/prodg-untar-absolute.txt", data=b"x")],
                 "'/tmp/prodg-untar-absolute.txt' refused: an absolute path"),
    "hardlink out": ([member("passwd", tarfile.LNKTYPE, link="/etc/passwd")],
                     "'passwd' refused: a hard link to '/etc/passwd': an absolute path"),
    "hardlink up": ([member("up", tarfile.LNKTYPE, link="../outside/target.txt")],
                    "'up' refused: a hard link to '../outside/target.txt': a '..' component"),
    "hardlink to nothing restored": ([member("ghost", tarfile.LNKTYPE, link="never-written")],
                                     "'ghost' refused: a hard link to 'never-written', which is not a regular file "
                                     "restored before it"),
    "symlink up": ([member("etc", tarfile.SYMTYPE, link="../../../../../etc")],
                   "'etc' refused: a symlink to '../../../../../etc', which leads outside the folder"),
    "symlink absolute": ([member("etc", tarfile.SYMTYPE, link="/etc")],
                         "'etc' refused: a symlink to an absolute path ('/etc')"),
    # the classic: a link to a folder outside, then a file written through it
    "through a symlink": ([member("out", tarfile.SYMTYPE, link="../outside"),
                           member("out/target.txt", data=b"overwritten\n")],
                          "'out/target.txt' refused: its path passes through the symlink 'out' restored before it"),
    # each link inside by itself; followed through the first, the second leads out (the 2025 chain bypasses)
    "symlink chain": ([member("a/b/c/x", tarfile.SYMTYPE, link="../../../y"),
                       member("a/b/c/l", tarfile.SYMTYPE, link="x/../../../..")],
                      "'a/b/c/l' refused: a symlink to 'x/../../../..', which leads outside the folder"),
    "realpath overflow": (realpath_overflow(), f"{os.path.join(*'abcdefghijklmnop', 'l' * 254)!r} refused: its path "
                                               f"passes through the symlink 'a' restored before it"),
    "device": ([member("sda", tarfile.BLKTYPE)], "'sda' refused: a device file"),
    "character device": ([member("mem", tarfile.CHRTYPE)], "'mem' refused: a device file"),
    "fifo": ([member("pipe", tarfile.FIFOTYPE)], "'pipe' refused: a FIFO"),
    "setuid": ([member("sh", data=b"#!/bin/sh\n", mode=0o4755)], "'sh' refused: a setuid or setgid file (mode 4755)"),
    "setgid": ([member("sh", data=b"#!/bin/sh\n", mode=0o2755)], "'sh' refused: a setuid or setgid file (mode 2755)"),
    "directory replaced": ([member("d", tarfile.DIRTYPE, mode=0o755), member("d", tarfile.SYMTYPE, link="..")],
                           "'d' refused: it would replace the directory 'd' restored before it"),
    "symlink replaced": ([member("s", tarfile.SYMTYPE, link="ok.txt"), member("s", data=b"x")],
                         "'s' refused: it would replace the symlink 's' restored before it"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_refused_member_fails_the_restore_naming_it_and_leaves_nothing(store, tmp_path, case):
    members, message = REFUSED[case]
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "target.txt").write_bytes(b"original\n")
    parent = tmp_path / "restore-here"
    parent.mkdir()
    manifest = backed_up(store, case.replace(" ", "-"), tar_of(GOOD, *members))
    with pytest.raises(RestoreFailed) as refused:
        restore_folder(store[0], manifest, store[2], str(parent / "data"))
    assert f"member {message}" in str(refused.value), str(refused.value)
    assert manifest.objects[0].object_key in str(refused.value)
    # nothing half-written (no folder, no scratch sibling) and nothing outside
    assert os.listdir(parent) == []
    assert sorted(os.listdir(tmp_path)) == ["outside", "restore-here"]
    assert os.listdir(outside) == ["target.txt"] and (outside / "target.txt").read_bytes() == b"original\n"
    assert not os.path.lexists("/tmp/prodg-untar-absolute.txt")


def test_a_restore_with_a_wrong_store_key_fails_naming_the_refusal_and_writes_nothing(store, tmp_path):
    """The restore's download signs with the key it is given: the right key id with another secret is refused by
    the store (SignatureDoesNotMatch), the restore fails saying so without the secret, and nothing is written."""
    manifest = backed_up(store, "wrong-key", tar_of(GOOD))
    wrong_secret = f"not-{STORE_SECRET}"
    wrong = BackupStore(endpoint_url=store[0].endpoint_url, region="us-east-1", bucket=BUCKET,
                        access_key_id=STORE_KEY_ID, secret_access_key=wrong_secret)
    with pytest.raises(StoreError) as refused:
        restore_folder(wrong, manifest, store[2], str(tmp_path / "data"))
    assert f"downloading s3://{BUCKET}/{manifest.objects[0].object_key}: SignatureDoesNotMatch (HTTP 403)" in \
        str(refused.value), str(refused.value)
    assert wrong_secret not in str(refused.value)
    assert os.listdir(tmp_path) == []


def test_an_engine_shaped_tar_comes_back_with_owners_links_and_safe_modes(store, tmp_path):
    """What the Engine's archive API writes for a service's folder: the folder itself first, files owned by the
    service's uid, a second name of a file as a hard link, a relative symlink — and modes a service may have left
    too open."""
    files = {"grafana.db": b"SQLite format 3\x00" + os.urandom(5000), "plugins/readme.txt": b"plugins\n"}
    tar = tar_of(member(".", tarfile.DIRTYPE, mode=0o775),
                 member("grafana.db", data=files["grafana.db"], mode=0o666),
                 member("plugins", tarfile.DIRTYPE, mode=0o3777),
                 member("plugins/readme.txt", data=files["plugins/readme.txt"], mode=0o640),
                 member("plugins/also.db", tarfile.LNKTYPE, link="grafana.db"),
                 member("current", tarfile.SYMTYPE, link="plugins/readme.txt"),
                 member("csv/exports/today.csv", data=b"a,b\n", uid=0))  # its parents not listed
    hashes = {p: hashlib.sha256(d).hexdigest() for p, d in {**files, "plugins/also.db": files["grafana.db"],
                                                           "csv/exports/today.csv": b"a,b\n"}.items()}
    folder = tmp_path / "grafana"
    done = restore_folder(store[0], backed_up(store, "engine-shaped", tar, hashes), store[2], str(folder))
    assert done.sha256 == hashes and done.files == 4
    modes = {p: (stat.S_IMODE(os.lstat(folder / p).st_mode), os.lstat(folder / p).st_uid)
             for p in (".", "grafana.db", "plugins", "plugins/readme.txt", "csv", "csv/exports")}
    assert modes == {".": (0o755, OWNER), "grafana.db": (0o644, OWNER), "plugins": (0o755, OWNER),
                     "plugins/readme.txt": (0o640, OWNER), "csv": (0o755, 0), "csv/exports": (0o755, 0)}
    assert os.stat(folder / "plugins/also.db").st_ino == os.stat(folder / "grafana.db").st_ino
    assert os.readlink(folder / "current") == "plugins/readme.txt" and os.lstat(folder / "current").st_uid == OWNER
    assert sorted(os.listdir(tmp_path)) == ["grafana"]


def test_an_empty_folder_prepared_for_the_service_keeps_its_owner_when_the_tar_does_not_list_it(store, tmp_path):
    folder = tmp_path / "prepared"
    folder.mkdir(mode=0o770)
    os.chown(folder, OWNER, OWNER)
    done = restore_folder(store[0], backed_up(store, "unlisted-root", tar_of(GOOD)), store[2], str(folder))
    assert done.files == 1 and os.listdir(folder) == ["ok.txt"]
    assert (stat.S_IMODE(os.stat(folder).st_mode), os.stat(folder).st_uid) == (0o750, OWNER)


def test_a_file_that_differs_from_the_capture_leaves_nothing(store, tmp_path):
    manifest = backed_up(store, "differs", tar_of(GOOD), {"ok.txt": "0" * 64})
    with pytest.raises(RestoreFailed, match="1 restored files differ from the capture's hashes: ok.txt"):
        restore_folder(store[0], manifest, store[2], str(tmp_path / "data"))
    assert os.listdir(tmp_path) == []


def test_a_destination_through_a_planted_symlink_is_refused_and_nothing_is_written_there(store, tmp_path):
    """`prodg restore … --to shared/link/…` where someone who can write to `shared` planted `link -> elsewhere`."""
    shared, elsewhere = tmp_path / "shared", tmp_path / "elsewhere"
    shared.mkdir(mode=0o777)
    elsewhere.mkdir()
    os.symlink(elsewhere, shared / "link")
    folder = backed_up(store, "to-link", tar_of(GOOD))
    for to in (shared / "link" / "data", shared / "link"):
        with pytest.raises(RestoreRefused) as refused:
            restore_folder(store[0], folder, store[2], str(to))
        assert f"{shared / 'link'} is a symbolic link (to {elsewhere}); a restore never follows one" in \
            str(refused.value)
    secrets = backed_up(store, "to-link-file", b"API_TOKEN=restored\n")
    for to in (shared / "link" / "secrets.env", shared / "link"):
        with pytest.raises(RestoreRefused, match="is a symbolic link"):
            restore_file(store[0], secrets, store[2], str(to), force=True)
    assert os.listdir(elsewhere) == [] and os.listdir(shared) == ["link"]
    # the same destination, reached without the link: restored
    done = restore_folder(store[0], folder, store[2], str(elsewhere / "data"))
    assert done.sha256 and os.listdir(elsewhere / "data") == ["ok.txt"]
