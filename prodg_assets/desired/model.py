"""Desired state of the mainframe as pure, hashable data. Built by `desired.loader`; read by everything else."""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from dataclasses import asdict, dataclass, field
from typing import Mapping, Optional

from ..settings import Settings
from .interpolate import secret_names

# An image pinned by digest: `name@sha256:<64 hex>` (the only digest form Compose and the Engine take).
DIGEST_REFERENCE = re.compile(r"^(?P<repo>[^@]+)@(?P<digest>sha256:[0-9a-f]{64})$")

LAYERS = ("host_baseline", "network", "tls", "data_stores", "secrets", "observability", "hermes", "backups")
TRUST_TIERS = ("T1", "T2", "T3")
# a `user:` prodg can own a data folder to: uid[:gid]
NUMERIC_USER = re.compile(r"^(\d+)(?::(\d+))?$")


def asset_name(service: str) -> str:
    """Compose service name → asset key (`node-exporter` → `node_exporter`)."""
    return service.replace("-", "_")


def sha256_hex(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


@dataclass(frozen=True)
class Port:
    """A publication. `host_port` 0 is Compose's `HOST_IP::CONTAINER_PORT`: the Engine picks a free host port when
    the container is started (read it back from the container: `engine.facts.endpoint`). Shown as
    `127.0.0.1:0->5432/tcp`, the port number the Engine's API takes for "pick one"."""

    host_ip: str
    host_port: int
    container_port: int
    protocol: str = "tcp"

    @property
    def public(self) -> bool:
        return self.host_ip in ("0.0.0.0", "::")

    @property
    def engine_picked(self) -> bool:
        return self.host_port == 0

    def __str__(self) -> str:
        host = f"[{self.host_ip}]" if ":" in self.host_ip else self.host_ip
        return f"{host}:{self.host_port}->{self.container_port}/{self.protocol}"


def content_tree(trees_root: str, digest: str) -> str:
    """The folder under `trees_root` holding one config path (a bind source or a build context) with the content
    `digest` names: written once, never changed (gitops/repo.py lays it out)."""
    return posixpath.join(trees_root, digest[:16])


@dataclass(frozen=True)
class Mount:
    kind: str  # "bind" | "volume"
    source: str  # absolute host path (bind) or volume name
    target: str
    read_only: bool = False
    config_path: Optional[str] = None  # for binds of files in the config tree: path relative to the config root


@dataclass(frozen=True)
class Healthcheck:
    test: tuple[str, ...]
    interval_s: float = 30.0
    timeout_s: float = 30.0
    retries: int = 3
    start_period_s: float = 0.0


@dataclass(frozen=True)
class Build:
    context: str  # relative to the config root
    dockerfile: str = "Dockerfile"
    args: tuple[tuple[str, str], ...] = ()
    digest: str = ""  # of every file in the context: a new commit that leaves them alone reuses the image


@dataclass(frozen=True)
class Privileges:
    """What lets a container reach past its own namespaces — the Engine's side of the trust tiers: only T1 services
    may hold any of it (desired.compose refuses it for T2 and T3)."""

    privileged: bool = False
    cap_add: tuple[str, ...] = ()  # capability names, without CAP_
    pid: str = ""  # "host": the host's process table
    network_mode: str = ""  # "host": the host's network stack (no ports, no networks)
    devices: tuple[str, ...] = ()  # HOST:CONTAINER[:PERMISSIONS], hosts' paths under /dev

    @property
    def held(self) -> tuple[str, ...]:
        """What of it the service holds, in Compose's words."""
        return tuple(word for word, on in (("privileged", self.privileged), ("cap_add", self.cap_add),
                                           ("pid: host", self.pid), ("network_mode: host", self.network_mode),
                                           ("devices", self.devices)) if on)


@dataclass(frozen=True)
class ServiceSpec:
    """One Compose service, resolved: variables interpolated, paths absolute; secrets stay `${NAME}` references."""

    name: str
    container_name: str
    layer: str
    image: str
    build: Optional[Build] = None
    command: Optional[tuple[str, ...]] = None
    environment: tuple[tuple[str, str], ...] = ()
    env_files: tuple[str, ...] = ()
    ports: tuple[Port, ...] = ()
    volumes: tuple[Mount, ...] = ()
    networks: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (network name, aliases)
    healthcheck: Optional[Healthcheck] = None
    restart: str = "no"
    labels: tuple[tuple[str, str], ...] = ()
    user: Optional[str] = None
    depends_on: tuple[str, ...] = ()
    after: tuple[str, ...] = ()  # asset ordering only (x-prodg.after), not start order
    public_domains: tuple[str, ...] = ()
    trust_tier: str = "T2"
    internal_ports: tuple[int, ...] = ()
    public_ports: tuple[str, ...] = ()  # x-prodg.public_ports: "PORT/proto" it publishes on every address on purpose
    pull_policy: str = "missing"  # missing | always | never | build (engine.images)
    privileges: Privileges = Privileges()
    runs_as_root: str = ""  # x-prodg.runs_as_root: why this T2/T3 service must (the check no_root_below_t1)

    @property
    def asset(self) -> str:
        return asset_name(self.name)

    @property
    def secrets_used(self) -> frozenset[str]:
        return frozenset(m for _, value in self.environment for m in secret_names(value))

    def spec_hash(self, secret_values: Mapping[str, str] | None = None,
                  file_env: Mapping[str, str] | None = None) -> str:
        """Hash of everything that defines the container. Secrets (and env_file contents) enter only as hashes of
        their values, so a changed secret changes the hash without the hash revealing the value."""
        body = asdict(self)
        if body["pull_policy"] in ("missing", "build"):  # the defaults: a hash from before the field stays valid
            del body["pull_policy"]
        if not self.privileges.held:  # likewise
            del body["privileges"]
        del body["runs_as_root"]  # a note for the root check, not part of the container
        body["secret_hashes"] = {k: sha256_hex((secret_values or {}).get(k, "")) for k in sorted(self.secrets_used)}
        body["env_file_hashes"] = {k: sha256_hex(v) for k, v in sorted((file_env or {}).items())}
        return sha256_hex(json.dumps(body, sort_keys=True, default=str))[:32]


@dataclass(frozen=True)
class NetworkSpec:
    key: str  # the name services use in their `networks:`
    name: str  # the Docker network's name
    driver: str = "bridge"
    subnet: Optional[str] = None
    external: bool = False  # created outside prodg (never created or changed here; must exist)


@dataclass(frozen=True)
class DesiredState:
    project: str
    services: Mapping[str, ServiceSpec]
    networks: Mapping[str, NetworkSpec]
    volumes: tuple[str, ...]
    settings: Settings
    compose_file: str  # relative to the config root
    variables: Mapping[str, str] = field(default_factory=dict)

    def service_for_asset(self, asset: str) -> ServiceSpec:
        return next(s for s in self.services.values() if s.asset == asset)

    def upstream(self, service: str) -> tuple[str, ...]:
        spec = self.services[service]
        return tuple(sorted(set(spec.depends_on) | set(spec.after)))
