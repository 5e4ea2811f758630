"""Postgres, the data store: the census (databases and exact row counts), `pg_dumpall` streamed (from a helper
container on the server's network, or from inside its container), and the restore of a dump into a Postgres
(refused over data unless forced). Near 300 lines because the three share one container and one failure
vocabulary."""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Iterator, Mapping, Optional

from ..engine.exec import (
    STDERR,
    ContainerExec,
    ProducerFailed,
    exec_chunks,
    exec_run,
    reblocked,
)
from ..engine.helper import MOUNT, helper_chunks

if TYPE_CHECKING:
    import docker

SYSTEM_DATABASES = ("postgres", "template0", "template1")
# A pg_dumpall script recreates every role; in a fresh cluster the restoring superuser (and, with force, any role
# the target already has) exists already. Those errors are expected; every other ERROR fails the restore.
_IGNORABLE = re.compile(r'ERROR:\s+role "[^"]+" already exists')


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


def pg_dumpall_chunks(api: docker.APIClient, container: str, *, password: str = "", db_user: str = "postgres",
                      lock_wait_timeout_s: float = 300, idle_timeout_s: float = 600,
                      helper_root: str = "", port: int = 5432) -> Iterator[bytes]:
    """`pg_dumpall` of the whole cluster, streamed. With `helper_root` (a folder prodg and the Engine see at the
    same path: the deploy root) it runs in a helper container from `container`'s image on its network (TCP to
    127.0.0.1:`port`, the password in a pgpass file beside the FIFO) and comes out through a FIFO; without, inside
    `container` as the OS user postgres through the exec API, in 1 MiB writes (`reblocked`). A table locked longer
    than `lock_wait_timeout_s` fails the dump instead of stalling it."""
    dump = ["pg_dumpall", "-U", db_user, "--no-password", f"--lock-wait-timeout={int(lock_wait_timeout_s * 1000)}"]
    redact = (lambda s: s.replace(password, "<POSTGRES_PASSWORD>")) if password else (lambda s: s)
    if helper_root:
        files = {"pgpass": f"127.0.0.1:{port}:*:{_pgpass_field(db_user)}:{_pgpass_field(password)}\n".encode()} \
            if password else {}
        return helper_chunks(api, container, [*dump, "-h", "127.0.0.1", "-p", str(port)], shared_root=helper_root,
                             files=files, environment={"PGPASSFILE": f"{MOUNT}/pgpass"},
                             what="pg_dumpall", redact=redact, idle_timeout_s=idle_timeout_s,
                             user="postgres")  # the image's postgres user, never root
    env = {"PGPASSWORD": password} if password else {}
    return exec_chunks(api, container, reblocked(dump), user="postgres", environment=env, what="pg_dumpall",
                       redact=redact, idle_timeout_s=idle_timeout_s)


def _pgpass_field(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


class RestoreRefused(Exception):
    """The target already holds data and force was not given."""


class RestoreFailed(Exception):
    pass


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
