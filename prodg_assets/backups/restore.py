"""Restores: download → verify sha256 → decompress → `psql` inside a Postgres container, fed through the exec
API's stdin (no file lands on disk), and the restore drill that proves a dump restores into a scratch Postgres with the
row counts recorded at dump time.

Verification order: into a scratch container the sha256 is verified while streaming (one download; a mismatch at
the end fails the restore and the scratch is thrown away). Into any other target the whole object is verified
first and then streamed again, so a corrupt object never touches a real database.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import re
import secrets as pysecrets
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Iterator, Optional

from ..engine.docker_engine import errors as docker_errors

from .pipeline import STDERR, Census, ContainerExec, ProducerFailed, census, compression_of, decompress, exec_run
from .store import BackupStore

if TYPE_CHECKING:
    import docker

SYSTEM_DATABASES = ("postgres", "template0", "template1")
DEFAULT_SCRATCH_IMAGE = "prodg/postgres:bookworm"
# A pg_dumpall script recreates every role; in a fresh cluster the restoring superuser (and, with force, any role
# the target already has) exists already. Those errors are expected; every other ERROR fails the restore.
_IGNORABLE = re.compile(r'ERROR:\s+role "[^"]+" already exists')


class RestoreRefused(Exception):
    """The target already holds data and force was not given."""


class RestoreFailed(Exception):
    pass


def verified_download(store: BackupStore, key: str, expected_sha256: str) -> Iterator[bytes]:
    """The object's bytes; after the last chunk, raises RestoreFailed unless they hash to `expected_sha256`."""
    digest = hashlib.sha256()
    for chunk in store.download(key):
        digest.update(chunk)
        yield chunk
    if digest.hexdigest() != expected_sha256:
        raise RestoreFailed(f"{key}: the downloaded bytes hash to {digest.hexdigest()}, expected {expected_sha256}")


def verify_object(store: BackupStore, key: str, expected_sha256: str) -> int:
    """Download `key` and check its sha256; returns its size."""
    size = 0
    for chunk in verified_download(store, key, expected_sha256):
        size += len(chunk)
    return size


@dataclass(frozen=True)
class TargetContents:
    databases: tuple[str, ...]  # besides postgres, template0, template1
    relations_in_postgres: int  # tables, views, sequences … in the postgres database's own schemas

    @property
    def empty(self) -> bool:
        return not self.databases and not self.relations_in_postgres


def target_contents(api: docker.APIClient, container: str, db_user: str = "postgres") -> TargetContents:
    sql = ("select 'D', datname from pg_database where datname not in ('postgres', 'template0', 'template1') "
           "union all select 'R', count(*)::text from pg_class c join pg_namespace n on n.oid = c.relnamespace "
           "where n.nspname not in ('pg_catalog', 'information_schema') and n.nspname not like 'pg\\_%'")
    code, out, err = exec_run(api, container, ["psql", "-X", "-A", "-t", "-q", "-F", "\t", "-U", db_user, "-d",
                                               "postgres", "-c", sql], user="postgres", what="psql")
    if code != 0:
        raise RestoreFailed(f"cannot read what {container} holds: {err.decode('utf-8', 'replace').strip()[-300:]}")
    databases, relations = [], 0
    for line in out.decode("utf-8", "replace").splitlines():
        kind, _, value = line.partition("\t")
        if kind == "D":
            databases.append(value)
        elif kind == "R":
            relations = int(value)
    return TargetContents(tuple(sorted(databases)), relations)


def wipe(api: docker.APIClient, container: str, contents: TargetContents, db_user: str = "postgres") -> None:
    """Drop the target's own databases and the objects of its postgres database (force)."""
    statements = [f'drop database if exists "{d.replace(chr(34), chr(34) * 2)}" with (force);'
                  for d in contents.databases]
    statements.append(
        "do $$ declare s record; begin for s in select nspname from pg_namespace where nspname not in "
        "('pg_catalog', 'information_schema') and nspname not like 'pg\\_%' loop "
        "execute format('drop schema %I cascade', s.nspname); end loop; end $$;")
    statements.append("create schema if not exists public; grant all on schema public to public;")
    code, _, err = exec_run(api, container, ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-U", db_user, "-d",
                                             "postgres"], user="postgres", what="psql",
                            stdin="\n".join(statements).encode() + b"\n")
    if code != 0:
        raise RestoreFailed(f"could not clear {container} for the restore: "
                            f"{err.decode('utf-8', 'replace').strip()[-300:]}")


@dataclass(frozen=True)
class RestoreResult:
    container: str
    key: str
    sql_bytes: int
    duration_s: float
    ignored_errors: int
    wiped: tuple[str, ...] = ()


class _ErrorCollector:
    """Reads the exec's output frames in a thread; keeps psql's ERROR/FATAL lines (the first 50) and a count."""

    def __init__(self, proc: ContainerExec):
        self.proc = proc
        self.errors: list[str] = []
        self.ignored = 0
        self.count = 0
        self.failure: Optional[BaseException] = None
        self._partial = b""
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            for stream, data in self.proc.frames():
                if stream == STDERR:
                    self._feed(data)
            self._feed(b"\n")
        except BaseException as exc:  # reported by the restoring thread
            self.failure = exc

    def _feed(self, data: bytes) -> None:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for raw in lines:
            line = raw.decode("utf-8", "replace")
            if "ERROR:" not in line and "FATAL:" not in line:
                continue
            if _IGNORABLE.search(line):
                self.ignored += 1
                continue
            self.count += 1
            if len(self.errors) < 50:
                self.errors.append(line.strip()[:500])


def restore_sql(api: docker.APIClient, container: str, sql_chunks: Iterable[bytes], db_user: str = "postgres",
                force: bool = False, key: str = "", idle_timeout_s: float = 6 * 3600) -> RestoreResult:
    """Feed a pg_dumpall script to `psql` in `container`. Refuses a target that holds databases or tables unless
    `force`, which drops them first."""
    started = time.monotonic()
    contents = target_contents(api, container, db_user)
    if not contents.empty:
        if not force:
            held = ", ".join(contents.databases) or f"{contents.relations_in_postgres} relations in postgres"
            raise RestoreRefused(f"{container} is not empty ({held}); restoring would overwrite it — pass "
                                 f"force=True to drop what it holds first")
        wipe(api, container, contents, db_user)
    proc = ContainerExec(api, container, ["psql", "-X", "-q", "-U", db_user, "-d", "postgres", "-o", "/dev/null"],
                         user="postgres", what="psql", idle_timeout_s=idle_timeout_s).start()
    collector = _ErrorCollector(proc)
    collector.thread.start()
    sent = 0
    try:
        try:
            for chunk in sql_chunks:
                proc.send(chunk)
                sent += len(chunk)
        except OSError as exc:  # psql went away: its stderr says why
            collector.thread.join(timeout=10)
            raise RestoreFailed(f"psql in {container} stopped reading after {sent} bytes ({exc}): "
                                + "; ".join(collector.errors[:3])) from None
        proc.close_stdin()
        collector.thread.join(timeout=idle_timeout_s)
        code = proc.exit_code()
    finally:
        proc.close()
    if collector.failure is not None:
        raise RestoreFailed(f"psql in {container}: {collector.failure}")
    if code != 0 or collector.count:
        raise RestoreFailed(f"psql in {container} exited with status {code} and {collector.count} errors: "
                            + "; ".join(collector.errors[:5]))
    return RestoreResult(container, key, sent, time.monotonic() - started, collector.ignored,
                         contents.databases if force else ())


def restore_object(store: BackupStore, key: str, expected_sha256: str, api: docker.APIClient, container: str,
                   db_user: str = "postgres", force: bool = False, verify_first: bool = True) -> RestoreResult:
    """Restore the dump `key` into the Postgres running in `container`. psql is silent while it works and stops
    reading stdin during a long statement (an index build), so the idle limit is hours, not minutes."""
    if verify_first:
        verify_object(store, key, expected_sha256)
    chunks = decompress(verified_download(store, key, expected_sha256), compression_of(key))
    return restore_sql(api, container, chunks, db_user=db_user, force=force, key=key)


def wait_ready(api: docker.APIClient, container: str, db_user: str = "postgres", timeout_s: float = 90) -> None:
    """Until Postgres in `container` accepts TCP connections on its loopback (after any init-time restart)."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = api.inspect_container(container).get("State") or {}
        if not state.get("Running"):
            logs = api.logs(container, tail=20).decode("utf-8", "replace")
            raise RestoreFailed(f"scratch Postgres {container} stopped (exit {state.get('ExitCode')}): {logs}")
        code, _, _ = exec_run(api, container, ["pg_isready", "-q", "-h", "127.0.0.1", "-U", db_user, "-d",
                                               "postgres"], user="postgres", what="pg_isready", timeout_s=10)
        if code == 0:
            return
        if time.monotonic() > deadline:
            raise RestoreFailed(f"scratch Postgres {container} was not ready within {timeout_s:.0f}s")
        time.sleep(0.3)


SCRATCH_LABEL = "prodg.scratch"


def _created(attrs: dict) -> Optional[datetime.datetime]:
    """A container's creation time (the Engine gives nanoseconds: "2026-11-27T08:20:53.802345678Z")."""
    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?", attrs.get("Created") or "")
    if not match:
        return None
    fraction = (match.group(2) or ".0")[:7]
    return datetime.datetime.fromisoformat(match.group(1) + fraction).replace(tzinfo=datetime.timezone.utc)


def remove_stale_scratch(client: docker.DockerClient, older_than: datetime.timedelta,
                         kind: str = "restore") -> list[str]:
    """Remove scratch containers (label prodg.scratch=`kind`) older than `older_than` — left by a drill whose
    process was killed."""
    now = datetime.datetime.now(datetime.timezone.utc)
    removed = []
    for container in client.containers.list(all=True, filters={"label": f"{SCRATCH_LABEL}={kind}"}):
        created = _created(container.attrs)
        if created is not None and now - created > older_than:
            container.remove(force=True, v=True)
            removed.append(container.name)
    return removed


@contextlib.contextmanager
def scratch_postgres(client: docker.DockerClient, image: str, name: str, db_user: str = "postgres",
                     ready_timeout_s: float = 90) -> Iterator[str]:
    """A throwaway Postgres from `image` with no network at all (only exec reaches it), removed with its volumes
    afterwards. Yields the container's name."""
    password = pysecrets.token_urlsafe(18)  # never used by us (exec connects over the local socket), never shown
    container = client.containers.run(image, detach=True, name=name, network_mode="none",
                                      environment={"POSTGRES_PASSWORD": password, "POSTGRES_USER": db_user},
                                      labels={SCRATCH_LABEL: "restore"})
    try:
        wait_ready(client.api, name, db_user, ready_timeout_s)
        yield name
    finally:
        try:
            container.remove(force=True, v=True)
        except docker_errors.NotFound:
            pass


def compare_census(expected: Census, actual: Census, tolerance: float = 0.0) -> list[str]:
    """What differs between the census at dump time and after the restore. `tolerance` is the relative row-count
    difference accepted per table (0: exact), for dumps of a database that was written to while being counted."""
    findings = [f"database {d} is missing" for d in expected.databases if d not in actual.databases]
    skipped = set(expected.uncounted)
    for table, rows in sorted(expected.rows.items()):
        if table.split("/", 1)[0] in skipped:
            continue
        got = actual.rows.get(table)
        if got is None:
            findings.append(f"table {table} is missing")
        elif abs(got - rows) > tolerance * max(rows, 1):
            findings.append(f"{table}: {rows} rows at dump time, {got} restored")
    if tolerance == 0:
        findings += [f"table {t} was not there at dump time" for t in sorted(set(actual.rows) - set(expected.rows))
                     if t.split("/", 1)[0] not in skipped]
    return findings


@dataclass(frozen=True)
class DrillResult:
    passed: bool
    findings: tuple[str, ...]
    expected: Census
    actual: Census
    restore: RestoreResult
    image: str
    duration_s: float
    tables: int = field(default=0)
    rows: int = field(default=0)


def restore_drill(store: BackupStore, key: str, expected_sha256: str, expected: Census,
                  client: docker.DockerClient, image: str, name: str, db_user: str = "postgres",
                  tolerance: float = 0.0) -> DrillResult:
    """Restore `key` into a scratch Postgres from `image` and compare its census with `expected`."""
    started = time.monotonic()
    with scratch_postgres(client, image, name, db_user) as container:
        result = restore_object(store, key, expected_sha256, client.api, container, db_user, verify_first=False)
        try:
            actual = census(client.api, container, db_user)
        except ProducerFailed as exc:
            raise RestoreFailed(str(exc)) from None
    findings = compare_census(expected, actual, tolerance)
    return DrillResult(not findings, tuple(findings), expected, actual, result, image, time.monotonic() - started,
                       len(actual.rows), sum(actual.rows.values()))
