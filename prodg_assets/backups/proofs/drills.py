"""Restore drills: a day's dump restored into a scratch Postgres (no network, removed afterwards) and its census
compared with the one taken at dump time; scratch containers an interrupted drill left behind are removed."""

from __future__ import annotations

import contextlib
import datetime
import re
import secrets as pysecrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator, Optional, Sequence

from ...contract import LABEL_SCRATCH
from ...lazy import docker_errors
from ...streams import ProducerFailed
from ..capture.postgres import Census, census
from ..format.crypt import Identity
from ..restore.postgres import DEFAULT_POSTGRES_IMAGE, RestoreResult, restore_postgres, wait_ready
from ..store.client import BackupStore
from ..store.download import RestoreFailed
from ..store.manifest import Manifest

if TYPE_CHECKING:
    import docker

DEFAULT_SCRATCH_IMAGE = DEFAULT_POSTGRES_IMAGE
SCRATCH_LABEL = LABEL_SCRATCH


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
                                      environment={"POSTGRES_PASSWORD": password, "POSTGRES_USER": db_user,
                                                   "POSTGRES_DB": "postgres"},  # no database of the user's name
                                      labels={SCRATCH_LABEL: "restore"})
    try:
        wait_ready(client.api, name, db_user, ready_timeout_s)
        yield name
    finally:
        try:
            container.remove(force=True, v=True)
        except docker_errors.NotFound:
            pass


def compare_census(expected: Census, actual: Census, tolerance: float = 0.0,
                   grown: frozenset[str] = frozenset()) -> list[str]:
    """What differs between the census at dump time and after the restore. `tolerance` is the relative row-count
    difference accepted per table (0: exact), for dumps of a database that was written to while being counted;
    the tables in `grown` must hold at least as many rows as counted (written to between the count and the dump),
    any other table may differ (Dagster's queues and leases come and go)."""
    if grown:
        findings = [f"database {d} is missing" for d in expected.databases if d not in actual.databases]
        for table, rows in sorted(expected.rows.items()):
            got = actual.rows.get(table)
            if got is None:
                findings.append(f"table {table} is missing")
            elif table in grown and got < rows:
                findings.append(f"{table}: {rows} rows counted before the dump, only {got} restored")
        return findings
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


def restore_drill(store: BackupStore, manifest: Manifest, identities: Sequence[Identity], expected: Census,
                  client: docker.DockerClient, image: str, name: str, db_user: str = "postgres",
                  tolerance: float = 0.0, grown: frozenset[str] = frozenset()) -> DrillResult:
    """Restore the partition of `manifest` into a scratch Postgres from `image` and compare its census with
    `expected`."""
    started = time.monotonic()
    with scratch_postgres(client, image, name, db_user) as container:
        result = restore_postgres(store, manifest, identities, client.api, container, db_user, verify_first=False)
        try:
            actual = census(client.api, container, db_user)
        except ProducerFailed as exc:
            raise RestoreFailed(str(exc)) from None
    findings = compare_census(expected, actual, tolerance, grown)
    return DrillResult(not findings, tuple(findings), expected, actual, result, image, time.monotonic() - started,
                       len(actual.rows), sum(actual.rows.values()))
