"""Postgres, written by a restore: what a target holds, its wipe (only when forced), and a dump streamed into it
through psql (refused over data unless forced); `restore_postgres` feeds it a stored dump."""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Optional, Sequence

from ...engine.exec import STDERR, ContainerExec, exec_run
from ..format.crypt import Identity
from ..store.client import BackupStore
from ..store.download import RestoreFailed, plaintext, verify_object
from ..store.manifest import Manifest

if TYPE_CHECKING:
    import docker
# A pg_dumpall script recreates every role; in a fresh cluster the restoring superuser (and, with force, any role
# the target already has) exists already. Those errors are expected; every other ERROR fails the restore.
_IGNORABLE = re.compile(r'ERROR:\s+role "[^"]+" already exists')


# A scratch Postgres when the dump's own image is not at hand (docker/prod's dagster-postgres runs it too)
DEFAULT_POSTGRES_IMAGE = "prodg/postgres:bookworm"


class RestoreRefused(Exception):
    """The target already holds data and force was not given."""


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


def restore_postgres(store: BackupStore, manifest: Manifest, identities: Sequence[Identity], api: docker.APIClient,
                     container: str, db_user: str = "postgres", force: bool = False,
                     verify_first: bool = True) -> RestoreResult:
    """Restore the partition's dump into the Postgres running in `container`. psql is silent while it works and
    stops reading stdin during a long statement (an index build), so the idle limit is hours, not minutes."""
    entry = manifest.objects[0]
    if verify_first:
        verify_object(store, entry.object_key, entry.sha256, entry.version_id)
    return restore_sql(api, container, plaintext(store, manifest, entry, identities), db_user=db_user, force=force,
                       key=entry.object_key)
