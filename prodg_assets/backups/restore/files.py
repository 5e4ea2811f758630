"""Restores onto this machine's filesystem: a service's data folder (a `volume` target's tar, laid out by untar) and
the secrets file (written with mode 600). The stored object is verified against the manifest's sha256 in full before
a byte is written. Each is written beside its destination (a scratch sibling only this process can enter) and
renamed into place only when complete, so a refused or failed restore leaves nothing half-written. Existing data is
never overwritten in place: it is refused, or with `force` moved aside to `<path>.replaced-<UTC time>` once the
restore is complete (a Redis folder with an old append-only log beside the restored RDB would load the old log).
The destination's path is walked from / without following a symlink: one planted in a writable folder on the way is
refused, never followed."""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
import secrets
import shutil
import stat
import subprocess
from dataclasses import dataclass
from typing import Sequence

from ..format.crypt import Identity
from ..store.client import BackupStore
from ..store.download import RestoreFailed, plaintext, verify_object
from ..store.manifest import Manifest
from .postgres import RestoreRefused
from .untar import KEPT_MODE_BITS, SymlinkOnPath, extract_tar, open_directory


@dataclass(frozen=True)
class RestoredFiles:
    path: str
    files: int
    bytes: int
    sha256: dict[str, str]  # path relative to `path` → sha256 of the restored file
    moved_aside: str = ""  # where the data that was there went ("" if there was none)


def _stamp() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def open_parent(path: str) -> tuple[int, str]:
    """(an fd of `path`'s parent folder, `path`'s last name): the parent opened level by level from / with
    O_NOFOLLOW, missing levels created (755). Refused when an existing level, or `path` itself, is a symlink: one
    planted in a writable folder on the way would send the restore elsewhere."""
    path = os.path.abspath(path)
    parent, name = os.path.split(path)
    top = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = open_directory(top, [p for p in parent.split("/") if p], 0o755, "/")
    except SymlinkOnPath as link:
        raise _refused_link(path, link.path) from None
    except OSError as exc:
        raise RestoreFailed(f"{path}: cannot open its folder {parent}: {exc.strerror or exc}") from None
    finally:
        os.close(top)
    found = _lstat(fd, name)
    if found is not None and stat.S_ISLNK(found.st_mode):
        os.close(fd)
        raise _refused_link(path, path)
    return fd, name


def _refused_link(path: str, link: str) -> RestoreRefused:
    return RestoreRefused(f"{path}: {link} is a symbolic link (to {os.path.realpath(link)}); a restore never "
                          f"follows one, nothing was written (give the real path with --to if that is where it "
                          f"belongs)")


def _lstat(parent: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _holds_data(parent: int, name: str) -> bool:
    """Whether `name` in `parent` exists as anything but an empty folder."""
    found = _lstat(parent, name)
    if found is None:
        return False
    if not stat.S_ISDIR(found.st_mode):
        return True
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
    try:
        return bool(os.listdir(fd))
    finally:
        os.close(fd)


def _refuse_data(path: str, parent: int, name: str, force: bool) -> None:
    """Refuse existing data unless `force` (with it, the data is moved aside only once the restore is complete, by
    _put_in_place)."""
    if _holds_data(parent, name) and not force:
        raise RestoreRefused(f"{path} already holds data; nothing was written (give --force to move it aside to "
                             f"{path}.replaced-<time> and restore)")


def _put_in_place(path: str, parent: int, name: str, ready: str) -> str:
    """Rename the complete restore `ready` (a sibling) to `name`, data there first moved aside to
    `<name>.replaced-<UTC time>`; an empty folder there is replaced. Returns where the data went ("" if nowhere)."""
    aside = ""
    if _holds_data(parent, name):
        aside = f"{name}.replaced-{_stamp()}"
        os.rename(name, aside, src_dir_fd=parent, dst_dir_fd=parent)
    try:
        os.rename(ready, name, src_dir_fd=parent, dst_dir_fd=parent)
    except OSError as exc:
        raise RestoreFailed(f"{path}: cannot put the restored data in place: {exc.strerror or exc}") from None
    return os.path.join(os.path.dirname(path), aside) if aside else ""


def _scratch_name(name: str) -> str:
    return f".{name}.restoring-{_stamp()}-{secrets.token_hex(3)}"


def restore_folder(store: BackupStore, manifest: Manifest, identities: Sequence[Identity], folder: str,
                   force: bool = False) -> RestoredFiles:
    """Lay the day's tar out as `folder` (untar: owners as captured, modes without group/other write, nothing
    outside it), each file's sha256 checked against the capture's. It is laid out in a scratch sibling (0700) and
    renamed into place only when complete: a refused member or a differing file leaves nothing behind."""
    entry = manifest.objects[0]
    verify_object(store, entry.object_key, entry.sha256, entry.version_id)
    folder = os.path.abspath(folder)
    parent, name = open_parent(folder)
    try:
        _refuse_data(folder, parent, name, force)
        empty = _lstat(parent, name)  # an empty folder there lends its owner and mode if the tar has none
        scratch = _scratch_name(name)
        os.mkdir(scratch, 0o700, dir_fd=parent)
        try:
            root = os.open(scratch, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
            try:
                done = extract_tar(plaintext(store, manifest, entry, identities), root, entry.object_key)
                if empty is not None and stat.S_ISDIR(empty.st_mode) and not done.root_listed:
                    if os.geteuid() == 0:
                        os.fchown(root, empty.st_uid, empty.st_gid)
                    os.fchmod(root, empty.st_mode & KEPT_MODE_BITS)
            finally:
                os.close(root)
            expected = manifest.extra.get("files")
            if expected is not None and done.files != expected:
                differ = sorted(p for p in set(done.files) | set(expected) if done.files.get(p) != expected.get(p))
                raise RestoreFailed(f"{folder}: {len(differ)} restored files differ from the capture's hashes: "
                                    f"{', '.join(differ[:10])}; nothing was restored")
            aside = _put_in_place(folder, parent, name, scratch)
        except BaseException:
            shutil.rmtree(scratch, dir_fd=parent, ignore_errors=True)
            raise
    finally:
        os.close(parent)
    return RestoredFiles(folder, len(done.files), done.bytes, done.files, aside)


def restore_file(store: BackupStore, manifest: Manifest, identities: Sequence[Identity], path: str,
                 force: bool = False, mode: int = 0o600) -> RestoredFiles:
    """Write the day's single file to `path` with `mode` (the secrets file: 600, set before any byte is written),
    through a new sibling (O_EXCL|O_NOFOLLOW) renamed into place when complete."""
    entry = manifest.objects[0]
    verify_object(store, entry.object_key, entry.sha256, entry.version_id)
    path = os.path.abspath(path)
    parent, name = open_parent(path)
    try:
        _refuse_data(path, parent, name, force)
        partial = _scratch_name(name)
        digest, size = hashlib.sha256(), 0
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode,
                     dir_fd=parent)
        try:
            with os.fdopen(fd, "wb") as out:
                os.fchmod(out.fileno(), mode)
                for chunk in plaintext(store, manifest, entry, identities):
                    out.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
            aside = _put_in_place(path, parent, name, partial)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(partial, dir_fd=parent)
            raise
    finally:
        os.close(parent)
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
