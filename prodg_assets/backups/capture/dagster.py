"""Dagster's own database — every run, event and materialisation prodg has recorded, the history an auditor reads —
found from the instance that runs the backup: the Postgres its run storage connects to (docker/prod's
`dagster-postgres`), located on the Engine by the host and port of that connection."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Optional

from ...streams import ProducerFailed

if TYPE_CHECKING:
    import docker

LOOPBACK = ("localhost", "127.0.0.1", "::1", "0.0.0.0", "::")

# The tables an operator reads the history from (dagster_postgres' schema): compared by the drill and shown in the UI
HISTORY_TABLES = {"runs": "public.runs", "events": "public.event_logs"}


@dataclass(frozen=True)
class DagsterDatabase:
    """Where the instance's run storage lives: a Postgres container on this Engine, and how to log in to it."""

    container: str
    database: str
    db_user: str
    password: str
    port: int  # inside the container

    def history(self, rows: Mapping[str, int]) -> dict[str, int]:
        """Runs and events of this database in a census's row counts."""
        return {name: int(rows.get(f"{self.database}/{table}", 0)) for name, table in HISTORY_TABLES.items()}


def storage_url(instance: Any) -> str:
    """The Postgres URL of the instance's run storage; "" when it is not Postgres (the dev shape's SQLite)."""
    return str(getattr(instance.run_storage, "postgres_url", "") or "")


def dagster_database(instance: Any, client: docker.DockerClient) -> DagsterDatabase:
    """The Postgres container holding `instance`'s runs and events. Refused, naming what was found instead (never
    the password), when the storage is not Postgres or its host is no running container of this Engine."""
    url = storage_url(instance)
    if not url:
        kind = type(instance.run_storage).__name__
        raise ProducerFailed(f"Dagster's storage here is {kind} in {instance.root_directory}, not Postgres: the "
                             f"dagster_storage target backs up the Postgres of the production shape (docker/prod)")
    from sqlalchemy.engine import make_url  # dagster's own dependency

    parsed = make_url(url)
    host, port = parsed.host or "localhost", int(parsed.port or 5432)
    found = _container_of(client, host, port)
    if found is None:
        raise ProducerFailed(f"Dagster's database at {host}:{port} is no running container on this Engine (the "
                             f"backup reaches it through the Engine: DOCKER_HOST)")
    name, inner_port = found
    return DagsterDatabase(name, parsed.database or "postgres", parsed.username or "postgres",
                           parsed.password or "", inner_port)


def _container_of(client: docker.DockerClient, host: str, port: int) -> Optional[tuple[str, int]]:
    """(container, port inside it) of the running container that `host:port` reaches: one named or aliased `host`
    on a network, one with that address, or — for a loopback host — the one publishing `port`."""
    try:
        attrs = client.api.inspect_container(host)
        if (attrs.get("State") or {}).get("Running"):
            return attrs["Name"].lstrip("/"), port
    except Exception:  # not a container's name: look further
        pass
    for container in client.containers.list():
        attrs = container.attrs
        networks = ((attrs.get("NetworkSettings") or {}).get("Networks") or {}).values()
        for net in networks:
            names = set(net.get("Aliases") or ()) | set(net.get("DNSNames") or ())
            if host in names or host == net.get("IPAddress"):
                return container.name, port
        if host in LOOPBACK:
            for inner, bindings in ((attrs.get("NetworkSettings") or {}).get("Ports") or {}).items():
                if any(str(b.get("HostPort")) == str(port) for b in bindings or ()):
                    return container.name, int(inner.split("/")[0])
    return None

