"""The streaming backup pipeline: producer → compressor → multipart upload, in constant memory, no temp file.

Producers are generators of byte chunks that raise `ProducerFailed` when the process behind them did not finish
cleanly (non-zero or unknown exit status); the store then aborts the upload, so a failed or truncated dump never
becomes an object. Producers here: `pg_dumpall` run inside the Postgres container through the Engine's exec API,
`git archive` of the config tree at a commit, and an object-level mirror of an S3 API (MinIO).
"""

from __future__ import annotations

import datetime
import io
import json
import os
import queue
import socket
import struct
import subprocess
import threading
import time
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Mapping, Optional, Sequence

from ..engine.docker_engine import errors as docker_errors

from .store import MIB, BackupStore, S3Source

if TYPE_CHECKING:
    import docker

COMPRESSIONS = {"zstd": ".zst", "gzip": ".gz"}
ZSTD_LEVEL = 3  # the lowest level whose output stays at or below gzip -6's size on SQL dumps (bench/RESULTS.md)
STDOUT, STDERR = 1, 2
MANIFEST_NAME = "manifest.json"
READ_BYTES = 1 << 20  # one read of an exec's output socket, at most


class ProducerFailed(Exception):
    """The process producing a backup's bytes failed; its output is incomplete and must not be kept."""


# -- compression ---------------------------------------------------------------------------------------------------
@dataclass
class ByteCount:
    bytes: int = 0


def compress(chunks: Iterable[bytes], method: str = "zstd", level: Optional[int] = None,
             raw: Optional[ByteCount] = None) -> Iterator[bytes]:
    """Compressed `chunks`, streamed, in the calling thread (zstd and zlib release the GIL while they work).
    `raw` counts the uncompressed bytes."""
    if method == "zstd":
        import zstandard

        compressor = zstandard.ZstdCompressor(level=level or ZSTD_LEVEL, threads=0).compressobj()
    elif method == "gzip":
        compressor = zlib.compressobj(level or 6, zlib.DEFLATED, 31)
    else:
        raise ValueError(f"compression must be one of {', '.join(COMPRESSIONS)}, got {method!r}")
    for chunk in chunks:
        if raw is not None:
            raw.bytes += len(chunk)
        out = compressor.compress(chunk)
        if out:
            yield out
    tail = compressor.flush()
    if tail:
        yield tail


class _ChunkReader(io.RawIOBase):
    """A readable file over an iterator of byte chunks (what zstandard's stream_reader reads from)."""

    def __init__(self, chunks: Iterable[bytes]):
        self._chunks, self._buf = iter(chunks), b""

    def readable(self) -> bool:
        return True

    def readinto(self, target) -> int:
        while not self._buf:
            try:
                self._buf = next(self._chunks)
            except StopIteration:
                return 0
        n = min(len(target), len(self._buf))
        target[:n], self._buf = self._buf[:n], self._buf[n:]
        return n


DECOMPRESSED_BLOCK = 1 << 20


def decompress(chunks: Iterable[bytes], method: str) -> Iterator[bytes]:
    """Decompressed blocks of at most 1 MiB each, whatever the compression ratio (a highly compressible dump must not
    become one huge bytes object)."""
    if method == "zstd":
        import zstandard

        with zstandard.ZstdDecompressor().stream_reader(_ChunkReader(chunks), read_across_frames=True) as reader:
            while block := reader.read(DECOMPRESSED_BLOCK):
                yield block
        return
    if method != "gzip":
        raise ValueError(f"compression must be one of {', '.join(COMPRESSIONS)}, got {method!r}")
    decompressor = zlib.decompressobj(31)
    for chunk in chunks:
        pending = chunk
        while pending:
            out = decompressor.decompress(pending, DECOMPRESSED_BLOCK)
            if out:
                yield out
            pending = decompressor.unconsumed_tail
    tail = decompressor.flush()
    if tail:
        yield tail
    if not decompressor.eof:
        raise ValueError("the gzip stream is truncated")


def compression_of(key: str) -> str:
    for method, ext in COMPRESSIONS.items():
        if key.endswith(ext):
            return method
    raise ValueError(f"{key}: cannot tell the compression from the name (expected {', '.join(COMPRESSIONS.values())})")


# -- object keys: every key starts with <prefix><partition date>/ ---------------------------------------------------
def postgres_key(prefix: str, date: str, at: datetime.datetime, compression: str) -> str:
    return f"{prefix}{date}/pg_dumpall-{at:%H%M%S}.sql{COMPRESSIONS[compression]}"


def config_key(prefix: str, date: str, commit: str, compression: str) -> str:
    return f"{prefix}{date}/config-{(commit or 'worktree')[:12]}.tar{COMPRESSIONS[compression]}"


def mirror_base(prefix: str, date: str) -> str:
    return f"{prefix}{date}/"


def manifest_key(prefix: str, date: str) -> str:
    return f"{mirror_base(prefix, date)}{MANIFEST_NAME}"


# -- processes in containers ------------------------------------------------------------------------------------------
class ContainerExec:
    """One process in a container through the Engine's exec API, on the hijacked exec socket.

    The socket (rather than `exec_start(stream=True)`) lets us write stdin and half-close it. Closing the stream
    does not end the process (the Engine drains its output to nowhere), so a process still running when the
    consumer gives up is killed: the exec carries a random token in its environment, inherited by its children
    (pg_dumpall's pg_dump), and a second exec as root sends TERM to every process holding it. The command is
    gated behind one line on stdin (`read`): the SDK parses the HTTP upgrade response through a buffered reader and
    then reads the raw socket, so output the process wrote before the headers were parsed could be lost; the gate
    makes the process wait until we are reading."""

    GATE = 'read -r _ || exit 125; exec "$@"'

    def __init__(self, api: docker.APIClient, container: str, cmd: Sequence[str], *, user: str = "",
                 environment: Optional[Mapping[str, str]] = None, what: str = "", idle_timeout_s: float = 600.0):
        self.api, self.container, self.cmd = api, container, list(cmd)
        self.user, self.environment = user, dict(environment or {})
        self.what = what or cmd[0]
        self.idle_timeout_s = idle_timeout_s
        self.exec_id = ""
        self._sock = None
        self.token = os.urandom(8).hex()

    def start(self) -> "ContainerExec":
        try:
            self.exec_id = self.api.exec_create(
                self.container, ["sh", "-c", self.GATE, "sh", *self.cmd], stdin=True, stdout=True, stderr=True,
                tty=False, user=self.user, environment={**self.environment, "PRODG_EXEC_TOKEN": self.token})["Id"]
            self._sock = self.api.exec_start(self.exec_id, socket=True)
        except docker_errors.APIError as exc:
            raise ProducerFailed(f"{self.what}: cannot run in container {self.container}: "
                                 f"{exc.explanation or exc}") from None
        self._raw.settimeout(self.idle_timeout_s)
        self.send(b"\n")  # open the gate
        return self

    @property
    def _raw(self):
        return getattr(self._sock, "_sock", self._sock)  # SocketIO → socket; paramiko channels stay as they are

    def send(self, data: bytes) -> None:
        self._raw.sendall(data)

    def close_stdin(self) -> None:
        raw = self._raw
        if hasattr(raw, "shutdown_write"):
            raw.shutdown_write()
        else:
            raw.shutdown(socket.SHUT_WR)

    def frames(self) -> Iterator[tuple[int, bytes]]:
        """(stream, data) frames of the multiplexed output until the process closes it. A truncated frame, a
        broken connection or `idle_timeout_s` without a byte raise ProducerFailed. (The SDK's own frame reader
        polls without a timeout, so a stalled process would hang it forever.)"""
        while True:
            header = self._read_exactly(8)
            if header is None:
                return
            stream, size = struct.unpack(">BxxxL", header)
            if size:
                data = self._read_exactly(size)
                if data is None:
                    raise ProducerFailed(f"{self.what} in {self.container}: output ended inside a frame")
                yield stream, data

    def output(self) -> Iterator[tuple[bytes, bytes]]:
        """(stdout, stderr) demultiplexed from each read of the socket (up to READ_BYTES), until the process closes
        its output: the frames that one read completed, joined — one bytes object per stream and read instead of
        one per frame (the Engine frames every write of the process, often 4–32 KiB). Same failures as frames()."""
        pending = bytearray()
        while True:
            data = self._recv(READ_BYTES)
            if not data:
                if pending:
                    raise ProducerFailed(f"{self.what} in {self.container}: output ended inside a frame")
                return
            pending += data
            out: list = []
            err: list = []
            pos, end = 0, len(pending)
            with memoryview(pending) as view:
                while end - pos >= 8:
                    stream, size = struct.unpack_from(">BxxxL", view, pos)
                    if end - pos - 8 < size:
                        break
                    if size:
                        (err if stream == STDERR else out).append(view[pos + 8:pos + 8 + size])
                    pos += 8 + size
                stdout, stderr = b"".join(out), b"".join(err)
                out.clear()
                err.clear()
            del pending[:pos]
            if stdout or stderr:
                yield stdout, stderr

    def _recv(self, n: int) -> bytes:
        try:
            return self._raw.recv(n)
        except socket.timeout:
            raise ProducerFailed(f"{self.what} in {self.container}: no output for "
                                 f"{self.idle_timeout_s:.0f}s") from None
        except OSError as exc:
            raise ProducerFailed(f"{self.what} in {self.container}: output stream broke off ({exc})") from None

    def _read_exactly(self, n: int) -> Optional[bytes]:
        """n bytes, or None at a clean end of stream."""
        buf = bytearray()
        while len(buf) < n:
            try:
                chunk = self._raw.recv(min(n - len(buf), 1 << 20))
            except socket.timeout:
                raise ProducerFailed(f"{self.what} in {self.container}: no output for "
                                     f"{self.idle_timeout_s:.0f}s") from None
            except OSError as exc:
                raise ProducerFailed(f"{self.what} in {self.container}: output stream broke off ({exc})") from None
            if not chunk:
                if buf:
                    raise ProducerFailed(f"{self.what} in {self.container}: output ended inside a frame")
                return None
            buf += chunk
        return bytes(buf)

    def exit_code(self, wait_s: float = 30.0) -> Optional[int]:
        """The process's exit status once the Engine reports it finished; None if it does not within `wait_s`."""
        deadline = time.monotonic() + wait_s
        while True:
            info = self.api.exec_inspect(self.exec_id)
            if not info.get("Running") and info.get("ExitCode") is not None:
                return int(info["ExitCode"])
            if time.monotonic() > deadline:
                return None
            time.sleep(0.05)

    KILL = ('for p in /proc/[0-9]*; do grep -q "PRODG_EXEC_TOKEN=$1" "$p/environ" 2>/dev/null && '
            'kill -TERM "${p#/proc/}" 2>/dev/null; done; true')

    def kill_if_running(self) -> None:
        """TERM every process of this exec (and its children) still running in the container; best effort."""
        if not self.exec_id:
            return
        try:
            if not self.api.exec_inspect(self.exec_id).get("Running"):
                return
            killer = self.api.exec_create(self.container, ["sh", "-c", self.KILL, "sh", self.token], user="0",
                                          stdout=False, stderr=False)["Id"]
            self.api.exec_start(killer, detach=True)
            deadline = time.monotonic() + 10
            while self.api.exec_inspect(killer).get("Running") and time.monotonic() < deadline:
                time.sleep(0.05)
        except Exception:  # the container or the Engine is gone: nothing left to kill from here
            pass

    def close(self) -> None:
        if self._sock is None:
            return
        self.kill_if_running()
        try:  # wakes a thread blocked reading the socket (close alone would not)
            self._raw.shutdown(socket.SHUT_RDWR)
        except Exception:  # already broken or closed: nothing to wake
            pass
        for obj in (self._raw, self._sock, getattr(self._sock, "_response", None)):
            try:
                if obj is not None:
                    obj.close()
            except Exception:  # closing a half-broken stream: nothing left to save
                pass
        self._sock = None


class TailBuffer:
    """The last `limit` bytes written to it (stderr of a producer)."""

    def __init__(self, limit: int = 64 * 1024):
        self.limit, self.data = limit, bytearray()

    def write(self, chunk: bytes) -> None:
        self.data += chunk
        if len(self.data) > self.limit:
            del self.data[:len(self.data) - self.limit]

    def text(self, redact: Callable[[str], str] = lambda s: s, lines: int = 15) -> str:
        tail = self.data.decode("utf-8", "replace").strip().splitlines()[-lines:]
        return redact("\n".join(tail))


READ_AHEAD = 24  # reads (≤ READ_BYTES each) an exec_chunks producer holds ahead of its consumer


def exec_chunks(api: docker.APIClient, container: str, cmd: Sequence[str], *, user: str = "",
                environment: Optional[Mapping[str, str]] = None, what: str = "",
                redact: Callable[[str], str] = lambda s: s, idle_timeout_s: float = 600.0,
                read_ahead: int = READ_AHEAD) -> Iterator[bytes]:
    """The stdout of `cmd` run in `container`, streamed; raises ProducerFailed after the last chunk when the exit
    status is non-zero or unknown (stderr's tail, redacted, in the message).

    A thread reads the exec socket up to `read_ahead` reads ahead of the consumer, so the process keeps writing
    while the consumer compresses or uploads. The generator itself stays in the consumer's thread: closing it
    (or an error) shuts the socket down there and then, which ends the process by SIGPIPE and the reader with it."""
    proc = ContainerExec(api, container, cmd, user=user, environment=environment, what=what,
                         idle_timeout_s=idle_timeout_s).start()
    stderr = TailBuffer()
    ahead: queue.Queue = queue.Queue(max(1, read_ahead))
    stop = threading.Event()
    end = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                ahead.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for out, err in proc.output():
                if err:
                    stderr.write(err)
                if out and not put(out):
                    return
            put(end)
        except BaseException as exc:  # handed to the consumer (or dropped once it has gone)
            put(exc)

    reader = threading.Thread(target=read, name=f"exec-reader-{proc.what}", daemon=True)
    try:
        proc.close_stdin()
        reader.start()
        while True:
            item = ahead.get()
            if item is end:
                break
            if isinstance(item, BaseException):
                raise item
            yield item
        reader.join()
        code = proc.exit_code()
    finally:
        stop.set()
        proc.close()
        if reader.ident is not None:
            reader.join(timeout=10)
    if code != 0:
        status = "did not report an exit status" if code is None else f"exited with status {code}"
        detail = stderr.text(redact)
        raise ProducerFailed(f"{proc.what} in container {container} {status}" + (f": {detail}" if detail else ""))


def exec_run(api: docker.APIClient, container: str, cmd: Sequence[str], *, user: str = "",
             environment: Optional[Mapping[str, str]] = None, what: str = "", stdin: bytes = b"",
             timeout_s: float = 120.0) -> tuple[Optional[int], bytes, bytes]:
    """(exit status, stdout, stderr) of a short command in `container`."""
    proc = ContainerExec(api, container, cmd, user=user, environment=environment, what=what,
                         idle_timeout_s=timeout_s).start()
    out, err = bytearray(), bytearray()
    try:
        if stdin:
            proc.send(stdin)
        proc.close_stdin()
        for stream, data in proc.frames():
            (out if stream == STDOUT else err).extend(data)
        return proc.exit_code(), bytes(out), bytes(err)
    finally:
        proc.close()


# -- Postgres ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Census:
    """What a Postgres cluster holds: its databases and the exact row count of every table ("db/schema.table")."""

    databases: tuple[str, ...]
    rows: Mapping[str, int] = field(default_factory=dict)
    uncounted: tuple[str, ...] = ()  # databases whose tables could not be counted (locked too long)

    def as_json(self) -> dict:
        return {"databases": list(self.databases), "rows": dict(sorted(self.rows.items())),
                "uncounted": list(self.uncounted)}

    @classmethod
    def from_json(cls, data: Mapping) -> "Census":
        return cls(tuple(data.get("databases") or ()), {k: int(v) for k, v in (data.get("rows") or {}).items()},
                   tuple(data.get("uncounted") or ()))


# Exact counts through query_to_xml: one query per database, no function created in the cluster.
_COUNT_SQL = """
select 'T', current_database(), n.nspname, c.relname,
  (xpath('/row/c/text()', query_to_xml(format('select count(*) as c from %I.%I', n.nspname, c.relname),
                                       false, true, '')))[1]::text::bigint
from pg_class c join pg_namespace n on n.oid = c.relnamespace
where c.relkind = 'r' and n.nspname not in ('pg_catalog', 'information_schema') and n.nspname not like 'pg\\_%'
order by 3, 4
"""
_CENSUS_SCRIPT = r"""
user="$1"; sql="$2"; tab=$(printf '\t')
psql -X -A -t -q -U "$user" -d postgres -c "select datname from pg_database where datallowconn order by 1" |
while IFS= read -r db; do
  printf 'D\t%s\n' "$db"
  psql -X -A -t -q -F "$tab" -v ON_ERROR_STOP=1 -U "$user" -d "$db" -c "$sql" </dev/null || printf 'E\t%s\n' "$db"
done
"""


def census(api: docker.APIClient, container: str, db_user: str = "postgres",
           lock_timeout_s: float = 300) -> Census:
    """Databases and exact row counts of every table in the Postgres running in `container` (read-only queries,
    run through exec before a dump and after a restore). A database whose tables cannot be counted — a table
    locked longer than `lock_timeout_s` — is listed in `uncounted` instead of failing the census."""
    code, out, err = exec_run(api, container, ["sh", "-c", _CENSUS_SCRIPT, "census", db_user, _COUNT_SQL],
                              user="postgres", what="the row-count census",
                              environment={"PGOPTIONS": f"-c lock_timeout={int(lock_timeout_s * 1000)}"},
                              timeout_s=lock_timeout_s + 120)
    databases, rows, uncounted = [], {}, []
    for line in out.decode("utf-8", "replace").splitlines():
        parts = line.split("\t")
        if parts[0] == "D" and len(parts) == 2:
            if parts[1] not in ("template0", "template1"):
                databases.append(parts[1])
        elif parts[0] == "E" and len(parts) == 2:
            uncounted.append(parts[1])
        elif parts[0] == "T" and len(parts) == 5:
            rows[f"{parts[1]}/{parts[2]}.{parts[3]}"] = int(parts[4])
    if code != 0 or not databases:
        raise ProducerFailed(f"the row-count census in {container} exited with status {code}: "
                             f"{err.decode('utf-8', 'replace').strip()[-500:]}")
    uncounted = [d for d in uncounted if d in databases]
    rows = {k: v for k, v in rows.items() if k.split("/", 1)[0] not in uncounted}
    return Census(tuple(databases), rows, tuple(uncounted))


# `"$@"` with its stdout re-blocked into 1 MiB writes by dd, in any POSIX sh (dash, busybox ash: no pipefail). The
# Engine frames every write the process makes and copies each through containerd-shim and dockerd: pg_dumpall
# writes through stdio (4 KiB buffers with glibc, 1 KiB with musl), and those small writes cost more CPU in the
# Engine and in our reader than the dump itself (bench/RESULTS.md). Exits with the first non-zero status of the
# command and dd (a dd that died would otherwise truncate a dump whose command succeeded).
REBLOCK = ('exec 4>&1; set -- $( { { "$@"; echo "$?" >&3; } | '
           '{ dd bs=1048576 iflag=fullblock 2>/dev/null >&4; echo "$?" >&3; }; } 3>&1 ); '
           '[ "$#" = 2 ] || exit 1; [ "$1" = 0 ] || exit "$1"; exit "$2"')


def reblocked(cmd: Sequence[str]) -> list[str]:
    """`cmd` with its stdout written in 1 MiB blocks (REBLOCK); needs only sh and dd (busybox has both)."""
    return ["sh", "-c", REBLOCK, "sh", *cmd]


def pg_dumpall_chunks(api: docker.APIClient, container: str, *, password: str = "", db_user: str = "postgres",
                      lock_wait_timeout_s: float = 300, idle_timeout_s: float = 600) -> Iterator[bytes]:
    """`pg_dumpall` of the whole cluster, run inside `container` as the OS user postgres, its stdout streamed in
    1 MiB writes (`reblocked`). A table locked longer than `lock_wait_timeout_s` fails the dump instead of
    stalling it."""
    cmd = reblocked(["pg_dumpall", "-U", db_user, "--no-password",
                     f"--lock-wait-timeout={int(lock_wait_timeout_s * 1000)}"])
    env = {"PGPASSWORD": password} if password else {}
    redact = (lambda s: s.replace(password, "<POSTGRES_PASSWORD>")) if password else (lambda s: s)
    return exec_chunks(api, container, cmd, user="postgres", environment=env, what="pg_dumpall", redact=redact,
                       idle_timeout_s=idle_timeout_s)


# -- the config tree --------------------------------------------------------------------------------------------------
def git_archive_chunks(repo_path: str, commit: str, subdir: str, chunk_size: int = MIB,
                       timeout_s: float = 600) -> Iterator[bytes]:
    """`git archive --format=tar <commit> -- <subdir>`, streamed."""
    proc = subprocess.Popen(["git", "-C", repo_path, "archive", "--format=tar", commit, "--", subdir],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stderr = TailBuffer(16 * 1024)
    drain = threading.Thread(target=lambda: [stderr.write(b) for b in iter(lambda: proc.stderr.read(4096), b"")],
                             daemon=True)
    drain.start()
    try:
        while True:
            chunk = proc.stdout.read1(chunk_size)
            if not chunk:
                break
            yield chunk
        code = proc.wait(timeout=timeout_s)
        drain.join(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if code != 0:
        raise ProducerFailed(f"git archive of {subdir} at {commit[:12]} exited with status {code}: {stderr.text()}")


# -- putting it together ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BackupResult:
    key: str
    raw_bytes: int
    bytes: int  # stored (compressed) bytes
    sha256: str  # of the stored object
    etag: str
    duration_s: float
    compression: str

    @property
    def throughput_mb_s(self) -> float:
        """Uncompressed MB (10^6 bytes) processed per second."""
        return round(self.raw_bytes / 1e6 / self.duration_s, 3) if self.duration_s > 0 else 0.0


def stream_backup(store: BackupStore, key: str, chunks: Iterable[bytes], compression: str = "zstd",
                  metadata: Optional[Mapping[str, str]] = None) -> BackupResult:
    """Compress `chunks` into the object `key`. Raises (and leaves no object) if the producer or the store fails.
    (A producer from exec_chunks reads ahead in a thread of its own, so the process keeps writing while this
    thread compresses, hashes and uploads a part.)"""
    started = time.monotonic()
    raw = ByteCount()
    up = store.upload_stream(key, compress(chunks, compression, raw=raw),
                             metadata={**(metadata or {}), "compression": compression})
    return BackupResult(key, raw.bytes, up.bytes, up.sha256, up.etag, time.monotonic() - started, compression)


@dataclass(frozen=True)
class MirrorResult:
    manifest_key: str
    manifest_sha256: str
    manifest_bytes: int
    manifest_etag: str
    objects: int
    bytes: int
    buckets: tuple[str, ...]
    duration_s: float
    stale_deleted: int = 0

    @property
    def throughput_mb_s(self) -> float:
        return round(self.bytes / 1e6 / self.duration_s, 3) if self.duration_s > 0 else 0.0


def mirror_s3(source: S3Source, store: BackupStore, prefix: str, date: str,
              now: Optional[datetime.datetime] = None) -> MirrorResult:
    """Copy every object of every bucket of `source` to `<prefix><date>/<bucket>/<key>`, then write the manifest
    (bucket, key, size, sha256 and ETag per object) last: a partition without its manifest is not a backup.

    Object by object rather than one archive, because a restore or an audit then deals with single objects (fetch
    one file back, verify one checksum, list sizes) without unpacking a day's tarball, and unchanged objects stay
    byte-identical from day to day, which deduplicating or copy-on-write storage and a later incremental mirror can
    exploit. On failure the objects this run copied are deleted again."""
    started = time.monotonic()
    base = mirror_base(prefix, date)
    entries: list[dict] = []
    written: list[str] = []
    buckets = source.bucket_names()
    try:
        for bucket in buckets:
            for obj in source.objects(bucket):
                dest = f"{base}{bucket}/{obj.key}"
                up = store.upload_stream(dest, source.stream(bucket, obj.key),
                                         metadata={"source-bucket": bucket, "source-etag": obj.etag})
                written.append(dest)
                entries.append({"bucket": bucket, "key": obj.key, "size": up.bytes, "sha256": up.sha256,
                                "etag": up.etag, "source_etag": obj.etag, "object_key": dest})
        manifest = {
            "format": 1, "partition": date,
            "created_at": (now or datetime.datetime.now(datetime.timezone.utc)).isoformat(timespec="seconds"),
            "source": source.endpoint_url, "buckets": buckets, "object_count": len(entries),
            "bytes": sum(e["size"] for e in entries), "objects": entries,
        }
        up = store.put_bytes(manifest_key(prefix, date), json.dumps(manifest, indent=1, sort_keys=True).encode(),
                             metadata={"object-count": str(len(entries))}, content_type="application/json")
    except BaseException as exc:
        if written:
            try:
                store.delete_objects(written)
            except Exception as cleanup:  # the original failure matters more; say what was left behind
                exc.add_note(f"{len(written)} objects copied under {base} could not be deleted: {cleanup}")
        raise
    keep = set(written) | {up.key}
    stale = [o.key for o in store.list(base) if o.key not in keep]  # left by an earlier run of this partition
    if stale:
        store.delete_objects(stale)
    return MirrorResult(up.key, up.sha256, up.bytes, up.etag, len(entries), sum(e["size"] for e in entries),
                        tuple(buckets), time.monotonic() - started, len(stale))
