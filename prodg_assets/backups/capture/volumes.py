"""A service's data folder captured consistently, as one tar stream whose members are relative to the folder (the
`volume` method; prodg.yaml backups.targets.*.capture says how):

- `redis_bgsave`: Redis writes a snapshot itself (BGSAVE, waited for until its save counter moves and the status is
  ok); the stream holds that finished RDB file, read through the Engine's archive API. The append-only files are
  not taken: mid-write, they are exactly what a copy must not catch. (A Redis with `appendonly yes` ignores an RDB
  that has no log beside it: a restore makes the RDB the base of a new log, restore_files.redis_aof_from_rdb.)
- `sqlite`: in a helper container with the service's mounts, every SQLite database under the folder is copied by
  SQLite's online backup API (a consistent snapshot while the service keeps writing; its -wal/-shm files are not
  taken), every other file as it is.
- `files`: the folder as the Engine's archive API reads it, for data written file by file and replaced by rename
  (Caddy's certificates and ACME account).

Nothing here touches the service's data: BGSAVE is Redis' own, the backup API only reads."""

from __future__ import annotations

import hashlib
import os
import queue
import tarfile
import threading
import time
from typing import TYPE_CHECKING, Iterator

from ...engine.exec import exec_run
from ...engine.helper import MOUNT, helper_chunks
from ...lazy import docker_errors
from ...settings import STALL_SETTING
from ...streams import ProducerFailed
from ..store.stream import ChunkReader

if TYPE_CHECKING:
    import docker

REDIS_ERRORS = ("ERR", "NOAUTH", "WRONGPASS", "NOPERM", "LOADING", "MISCONF", "AUTH failed")


def redis_cli(api: docker.APIClient, container: str, password: str, *args: str) -> str:
    """One redis-cli command in the service's container; the password through REDISCLI_AUTH (not the command
    line). Redis' error replies come back with exit status 0: they are recognised by their first word."""
    code, out, err = exec_run(api, container, ["redis-cli", "--no-auth-warning", *args],
                              environment={"REDISCLI_AUTH": password} if password else None,
                              what=f"redis-cli {args[0]}", timeout_s=60)
    text = (out.decode("utf-8", "replace") + err.decode("utf-8", "replace")).strip()
    if code != 0 or text.startswith(REDIS_ERRORS):
        raise ProducerFailed(f"redis-cli {' '.join(args)} in container {container}: "
                             f"{text.splitlines()[0] if text else f'exit status {code}'}")
    return text


def _persistence(info: str) -> dict[str, str]:
    return dict(line.split(":", 1) for line in info.splitlines() if ":" in line)


def redis_snapshot(api: docker.APIClient, container: str, password: str, timeout_s: float = 600.0) -> tuple[str, int]:
    """BGSAVE (scheduled after an append-only rewrite in progress), waited for; (the path of the finished RDB file,
    the number of keys just before it: what a restore drill expects back from a quiet Redis)."""
    keys = int(redis_cli(api, container, password, "DBSIZE") or 0)
    before = int(_persistence(redis_cli(api, container, password, "INFO", "persistence")).get("rdb_saves", "0"))
    redis_cli(api, container, password, "BGSAVE", "SCHEDULE")
    deadline = time.monotonic() + timeout_s
    while True:
        info = _persistence(redis_cli(api, container, password, "INFO", "persistence"))
        if int(info.get("rdb_saves", "0")) > before and info.get("rdb_bgsave_in_progress") == "0":
            if info.get("rdb_last_bgsave_status") != "ok":
                raise ProducerFailed(f"redis BGSAVE in container {container} failed (rdb_last_bgsave_status "
                                     f"{info.get('rdb_last_bgsave_status')}); see the service's log")
            break
        if time.monotonic() > deadline:
            raise ProducerFailed(f"redis BGSAVE in container {container} did not finish within {timeout_s:.0f} s")
        time.sleep(0.2)
    folder = redis_cli(api, container, password, "CONFIG", "GET", "dir").splitlines()[-1]
    name = redis_cli(api, container, password, "CONFIG", "GET", "dbfilename").splitlines()[-1]
    return f"{folder.rstrip('/')}/{name}", keys


def archive_chunks(api: docker.APIClient, container: str, source: str) -> Iterator[bytes]:
    """The Engine's tar of `source` in `container` (`folder/.`: the folder's contents, members relative to it)."""
    try:
        stream, _ = api.get_archive(container, source)
    except docker_errors.APIError as exc:
        raise ProducerFailed(f"reading {source} in container {container}: {exc.explanation or exc}") from None
    try:
        yield from stream
    except docker_errors.APIError as exc:
        raise ProducerFailed(f"reading {source} in container {container}: {exc.explanation or exc}") from None


# Run by python3 in the helper: the folder (argv[1]) as a tar on stdout; SQLite databases (recognised by their
# header) through the online backup API into the helper's private folder (argv[2]) first, their -wal, -shm and
# -journal files left out; stderr says which databases were copied that way.
SQLITE_TAR = r"""
import os, sqlite3, sys, tarfile
root, scratch = sys.argv[1], sys.argv[2]
def is_sqlite(path):
    try:
        with open(path, "rb") as fh:
            return fh.read(16) == b"SQLite format 3\x00"
    except OSError:
        return False
entries = []
for folder, dirs, files in os.walk(root):
    dirs.sort()
    rel = os.path.relpath(folder, root)
    entries += [(os.path.join(folder, d), os.path.normpath(os.path.join(rel, d))) for d in dirs]
    entries += [(os.path.join(folder, f), os.path.normpath(os.path.join(rel, f))) for f in sorted(files)]
dbs = {p for p, _ in entries if os.path.isfile(p) and not os.path.islink(p) and is_sqlite(p)}
skip = {d + s for d in dbs for s in ("-wal", "-shm", "-journal")}
with tarfile.open(fileobj=sys.stdout.buffer, mode="w|", format=tarfile.PAX_FORMAT) as tar:
    tar.add(root, arcname=".", recursive=False)
    for path, arc in entries:
        if path in skip:
            continue
        if path not in dbs:
            tar.add(path, arcname=arc, recursive=False)
            continue
        copy = os.path.join(scratch, "copy.sqlite3")
        src, dst = sqlite3.connect(path, timeout=60), sqlite3.connect(copy)
        src.backup(dst)
        dst.close(); src.close()
        info = tar.gettarinfo(path, arcname=arc)
        info.size = os.path.getsize(copy)
        with open(copy, "rb") as fh:
            tar.addfile(info, fh)
        os.remove(copy)
        print(f"sqlite online backup: {arc}", file=sys.stderr)
"""


def sqlite_folder_chunks(api: docker.APIClient, container: str, path: str, *, shared_root: str, image: str = "",
                         user: str = "", idle_timeout_s: float = 600.0) -> Iterator[bytes]:
    """`path` of `container` as a tar, its SQLite databases copied by the online backup API, run by python3 in a
    helper container that has the service's mounts (`image`: one with python3; default the service's own)."""
    return helper_chunks(api, container, ["python3", "-c", SQLITE_TAR, path, MOUNT], shared_root=shared_root,
                         what="sqlite-backup", image=image, with_volumes=True, user=user,
                         idle_timeout_s=idle_timeout_s, idle_setting=STALL_SETTING)


class TarHashes:
    """Each regular file's sha256 in a tar stream, computed on the way to the store (a parser thread reads what
    `tap` passes through): recorded in the manifest, so a restore compares every file it wrote with the capture."""

    def __init__(self) -> None:
        self.files: dict[str, str] = {}
        self.error = ""
        self._queue: queue.Queue = queue.Queue(maxsize=16)
        self._thread = threading.Thread(target=self._parse, name="tar-hashes", daemon=True)

    def tap(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        self._thread.start()
        try:
            for chunk in chunks:
                self._queue.put(chunk)
                yield chunk
        finally:
            self._queue.put(None)
            self._thread.join(timeout=60)

    def _parse(self) -> None:
        def pieces() -> Iterator[bytes]:
            while (chunk := self._queue.get()) is not None:
                yield chunk

        source = pieces()
        try:
            with tarfile.open(fileobj=ChunkReader(source), mode="r|") as tar:
                for member in tar:
                    if member.isfile():
                        digest = hashlib.sha256()
                        reader = tar.extractfile(member)
                        for block in iter(lambda: reader.read(1 << 20), b""):
                            digest.update(block)
                        self.files[os.path.normpath(member.name)] = digest.hexdigest()
                    elif member.islnk() and os.path.normpath(member.linkname) in self.files:
                        self.files[os.path.normpath(member.name)] = self.files[os.path.normpath(member.linkname)]
        except (tarfile.TarError, OSError, EOFError) as exc:
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            for _ in source:  # drain: the producer never blocks on a parser that stopped
                pass
