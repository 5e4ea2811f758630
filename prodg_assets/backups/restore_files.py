"""Restores onto this machine's filesystem: a service's data folder (a `volume` target's tar, extracted) and the
secrets file (written with mode 600). The stored object is verified against the manifest's sha256 in full before a
byte is written. Existing data is never overwritten in place: it is refused, or with `force` moved aside to
`<path>.replaced-<UTC time>` first (a Redis folder with an old append-only log beside the restored RDB would load
the old log)."""

from __future__ import annotations

import datetime
import hashlib
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from typing import Sequence

from .crypt import Identity
from .manifest import Manifest
from .postgres import RestoreFailed, RestoreRefused
from .restore import plaintext, verify_object
from .store import BackupStore
from .stream import ChunkReader


@dataclass(frozen=True)
class RestoredFiles:
    path: str
    files: int
    bytes: int
    sha256: dict[str, str]  # path relative to `path` → sha256 of the restored file
    moved_aside: str = ""  # where the data that was there went ("" if there was none)


def _stamp() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def _make_room(path: str, force: bool, is_folder: bool) -> str:
    """Refuse existing data unless `force`; with it, move the data aside. Returns where it went ("" if nowhere)."""
    exists = os.path.isdir(path) and bool(os.listdir(path)) if is_folder else os.path.lexists(path)
    if not exists:
        return ""
    if not force:
        raise RestoreRefused(f"{path} already holds data; nothing was written (give --force to move it aside to "
                             f"{path}.replaced-<time> and restore)")
    aside = f"{path}.replaced-{_stamp()}"
    os.rename(path, aside)
    return aside


def _as_captured(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
    """tarfile's `data` filter (nothing outside the folder, no device files, no links out of it), but owners and
    permission bits as captured: a service that runs as its own user (Grafana's 472) must be able to write to its
    restored folder — the `data` filter alone makes everything root's, with default directory modes."""
    safe = tarfile.data_filter(member, dest)
    return safe.replace(uid=member.uid, gid=member.gid, uname=None, gname=None,
                        mode=None if member.issym() else member.mode & 0o777, deep=False)


def restore_folder(store: BackupStore, manifest: Manifest, identities: Sequence[Identity], folder: str,
                   force: bool = False) -> RestoredFiles:
    """Extract the day's tar into `folder` (created; owners and modes as captured, nothing outside it)."""
    entry = manifest.objects[0]
    verify_object(store, entry.object_key, entry.sha256)
    folder = os.path.abspath(folder)
    aside = _make_room(folder, force, is_folder=True)
    os.makedirs(folder, exist_ok=True)
    try:
        with tarfile.open(fileobj=ChunkReader(plaintext(store, manifest, entry, identities)), mode="r|") as tar:
            tar.extractall(folder, numeric_owner=True, filter=_as_captured)
    except (tarfile.TarError, OSError) as exc:
        raise RestoreFailed(f"{entry.object_key}: extracting into {folder} failed: {exc}") from None
    hashes, total = {}, 0
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            if os.path.isfile(path) and not os.path.islink(path):
                hashes[os.path.relpath(path, folder)] = file_sha256(path)
                total += os.path.getsize(path)
    expected = manifest.extra.get("files")
    if expected is not None and hashes != expected:
        differ = sorted(p for p in set(hashes) | set(expected) if hashes.get(p) != expected.get(p))
        raise RestoreFailed(f"{folder}: {len(differ)} restored files differ from the capture's hashes: "
                            f"{', '.join(differ[:10])}")
    return RestoredFiles(folder, len(hashes), total, hashes, aside)


def restore_file(store: BackupStore, manifest: Manifest, identities: Sequence[Identity], path: str,
                 force: bool = False, mode: int = 0o600) -> RestoredFiles:
    """Write the day's single file to `path` with `mode` (the secrets file: 600, set before any byte is written)."""
    entry = manifest.objects[0]
    verify_object(store, entry.object_key, entry.sha256)
    path = os.path.abspath(path)
    aside = _make_room(path, force, is_folder=False)
    partial = f"{path}.restoring-{_stamp()}"
    digest, size = hashlib.sha256(), 0
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in plaintext(store, manifest, entry, identities):
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
        os.chmod(partial, mode)
        os.rename(partial, path)
    except BaseException:
        if os.path.exists(partial):
            os.remove(partial)
        raise
    return RestoredFiles(path, 1, size, {os.path.basename(path): digest.hexdigest()}, aside)


def redis_aof_from_rdb(folder: str, rdb: str = "dump.rdb", aof_dir: str = "appendonlydir",
                       aof_name: str = "appendonly.aof") -> None:
    """Make the restored RDB also the base of an append-only log, laid out as Redis 7 lays out its own after a
    rewrite: a Redis started with `appendonly yes` on a folder with an RDB and no log starts EMPTY (it creates a
    new log and ignores the RDB). With this it loads the RDB either way."""
    base, incr = f"{aof_name}.1.base.rdb", f"{aof_name}.1.incr.aof"
    os.makedirs(os.path.join(folder, aof_dir), exist_ok=True)
    shutil.copy2(os.path.join(folder, rdb), os.path.join(folder, aof_dir, base))
    open(os.path.join(folder, aof_dir, incr), "wb").close()
    with open(os.path.join(folder, aof_dir, f"{aof_name}.manifest"), "w", encoding="ascii") as fh:
        fh.write(f"file {base} seq 1 type b\nfile {incr} seq 1 type i\n")
    owner = os.stat(os.path.join(folder, rdb))
    for path in (os.path.join(folder, aof_dir), *(os.path.join(folder, aof_dir, n)
                                                  for n in (base, incr, f"{aof_name}.manifest"))):
        os.chown(path, owner.st_uid, owner.st_gid)


def compare_with_commit(repo_path: str, subdir: str, commit: str, folder: str) -> list[str]:
    """The files of `folder` whose git blob ids differ from (or are missing in, or are extra to) `subdir/` of
    `commit` in the repo; raises RestoreFailed when the repo does not have the commit. `folder` is laid out as the
    repo is (the config archive holds `<subdir>/…`, as `git archive` writes it)."""
    listing = subprocess.run(["git", "-C", repo_path, "ls-tree", "-r", "-z", commit, "--", f"{subdir}/"],
                             capture_output=True, text=True)
    if listing.returncode != 0:
        raise RestoreFailed(f"cannot compare with commit {commit[:12]}: {listing.stderr.strip()[:200]}")
    expected = {}
    for line in filter(None, listing.stdout.split("\0")):
        meta, path = line.split("\t", 1)
        expected[path] = meta.split()[2]
    paths = [os.path.join(root, n) for root, _, names in os.walk(folder) for n in names]
    blobs = subprocess.run(["git", "hash-object", "--no-filters", "--stdin-paths"], input="\n".join(paths),
                           capture_output=True, text=True, check=True).stdout.split() if paths else []
    restored = {os.path.relpath(p, folder): b for p, b in zip(paths, blobs)}
    return sorted(p for p in set(restored) | set(expected) if restored.get(p) != expected.get(p))


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
