"""Postgres, read for a backup: the census (databases and exact row counts) and `pg_dumpall` streamed (from a
helper container on the server's network, or from inside its container)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator, Mapping

from ...engine.exec import exec_chunks, exec_run, reblocked
from ...engine.helper import MOUNT, helper_chunks
from ...settings import STALL_SETTING
from ...streams import ProducerFailed

if TYPE_CHECKING:
    import docker


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
    than `lock_wait_timeout_s` fails the dump instead of stalling it; a dump that writes nothing for
    `idle_timeout_s` (backups.stall_timeout_s) is stopped and fails."""
    dump = ["pg_dumpall", "-U", db_user, "--no-password", f"--lock-wait-timeout={int(lock_wait_timeout_s * 1000)}"]
    redact = (lambda s: s.replace(password, "<POSTGRES_PASSWORD>")) if password else (lambda s: s)
    # every session of this dump (pg_dumpall's, and each pg_dump's it starts) carries this name, so that the
    # sessions of a dump that failed or was stopped can be ended in the server
    app_name = f"{DUMP_APPLICATION}{os.urandom(6).hex()}"
    if helper_root:
        files = {"pgpass": f"127.0.0.1:{port}:*:{_pgpass_field(db_user)}:{_pgpass_field(password)}\n".encode()} \
            if password else {}
        chunks = helper_chunks(api, container, [*dump, "-h", "127.0.0.1", "-p", str(port)], shared_root=helper_root,
                               files=files, environment={"PGPASSFILE": f"{MOUNT}/pgpass", "PGAPPNAME": app_name},
                               what="pg_dumpall", redact=redact, idle_timeout_s=idle_timeout_s,
                               idle_setting=STALL_SETTING, user="postgres")  # the image's postgres user, never root
    else:
        env = {"PGPASSWORD": password, "PGAPPNAME": app_name} if password else {"PGAPPNAME": app_name}
        chunks = exec_chunks(api, container, reblocked(dump), user="postgres", environment=env, what="pg_dumpall",
                             redact=redact, idle_timeout_s=idle_timeout_s, idle_setting=STALL_SETTING)
    return _ending_its_sessions(chunks, api, container, db_user, app_name)


DUMP_APPLICATION = "prodg-dump-"  # application_name prefix of a dump's sessions (then a random hex token)


def _ending_its_sessions(chunks: Iterator[bytes], api: docker.APIClient, container: str, db_user: str,
                         app_name: str) -> Iterator[bytes]:
    """`chunks`; when they end in a failure (or are closed early), the dump's own sessions in the server are ended
    too: a pg_dump waiting for a table's lock does not notice that its client is gone, and would hold its place in
    the lock queue (and block what queues behind it) until --lock-wait-timeout."""
    finished = False
    try:
        yield from chunks
        finished = True
    finally:
        chunks.close()
        if not finished:
            terminate = (f"select pg_terminate_backend(pid) from pg_stat_activity "
                         f"where application_name = '{app_name}'")  # app_name: our prefix and hex, nothing quoted
            try:
                exec_run(api, container, ["psql", "-X", "-q", "-U", db_user, "-d", "postgres", "-c", terminate],
                         user="postgres", what="ending the dump's sessions", timeout_s=30)
            except Exception:  # the server is gone or not answering: then neither are the dump's sessions
                pass


def _pgpass_field(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")
