"""Facts: every read of the Docker Engine, and what a container looks like as comparable data — read from
`docker inspect`, or derived from a spec.

Both sides reduce to the same shape, so a plan is a field-by-field comparison. Environment values enter only as
hashes: facts are safe to log and to put in metadata. Nothing outside this module reads the Engine's state
(apply changes it; exec runs processes in it).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Optional

from ..contract import LABEL_COMMIT, LABEL_IMAGE_DIGEST, LABEL_PROJECT, LABEL_SERVICE, LABEL_SPEC_HASH
from ..desired.interpolate import resolve_env
from ..desired.model import DesiredState, ServiceSpec, sha256_hex
from ..lazy import docker_errors as errors
from ..secret_source import parse_env_file
from .failures import ApplyFailed

if TYPE_CHECKING:
    import docker


@dataclass(frozen=True)
class Facts:
    image_id: str
    command: Optional[tuple[str, ...]]  # None: the image's default
    env: tuple[tuple[str, str], ...]  # (key, sha256 of value)
    ports: tuple[str, ...]
    mounts: tuple[str, ...]
    networks: tuple[str, ...]
    restart: str
    user: str
    labels: tuple[tuple[str, str], ...]
    healthcheck: tuple[str, ...]
    running: bool = True
    # the registry digest: live, the one the container's image was pulled as (its label); desired, the one its
    # registry serves for the tag now ("" on either side: not known, not compared)
    image_digest: str = ""

    def diff(self, other: "Facts") -> dict[str, tuple[str, str]]:
        """Fields that differ: {field: (self's value, other's value)} as display strings (env keys only)."""
        out: dict[str, tuple[str, str]] = {}
        for name in self.__dataclass_fields__:
            mine, theirs = getattr(self, name), getattr(other, name)
            if name in ("command", "healthcheck", "user") and not theirs:
                continue  # not declared: the image's default applies, whatever it is
            if name == "image_digest" and not (mine and theirs):
                continue  # a local image, a registry that did not answer, or a container from before digests
            if mine != theirs:
                if name == "env":
                    out["env"] = _env_sides(dict(mine), dict(theirs))
                else:
                    out[name] = (_show(mine), _show(theirs))
        return out


@dataclass(frozen=True)
class Desired:
    service: str
    spec_hash: str
    facts: Facts


@dataclass(frozen=True)
class Live:
    service: str
    container_id: str
    name: str
    spec_hash: str
    commit: str
    facts: Facts


def _env_sides(mine: dict[str, str], theirs: dict[str, str]) -> tuple[str, str]:
    """The env keys that differ, each side saying what it holds — `(absent)`, `(set)`, or `(other value)` on this
    side when both hold the key with different values. Values (hashes here, secrets on the host) are never shown."""
    keys = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))

    def side(here: dict[str, str], there: dict[str, str], other: str) -> str:
        return ", ".join(f"{k} ({'absent' if k not in here else other if k in there else 'set'})" for k in keys)

    return side(mine, theirs, "other value"), side(theirs, mine, "set")


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ", ".join(" ".join(v) if isinstance(v, tuple) else str(v) for v in value) or "(none)"
    return str(value)


ENGINE_LABEL_PREFIXES = ("prodg.", "com.docker.", "org.opencontainers.")


def desired_facts(spec: ServiceSpec, secrets: Mapping[str, str], image_id: str,
                  file_env: Mapping[str, str] | None = None, image_digest: str = "") -> Facts:
    """What the container should look like; `file_env` is what the service's env_files hold (under `environment`,
    as Compose layers them)."""
    env = {**(file_env or {}), **resolve_env(spec, secrets)}
    return Facts(
        image_id=image_id,
        command=spec.command,
        env=tuple(sorted((k, sha256_hex(v)) for k, v in env.items())),
        ports=tuple(sorted(str(p) for p in spec.ports)),
        mounts=tuple(sorted(f"{m.kind}:{m.source}:{m.target}:{'ro' if m.read_only else 'rw'}" for m in spec.volumes)),
        networks=tuple(sorted(name for name, _ in spec.networks)),
        restart=spec.restart,
        user=spec.user or "",
        labels=tuple(sorted((k, v) for k, v in spec.labels if not k.startswith(ENGINE_LABEL_PREFIXES))),
        healthcheck=tuple(spec.healthcheck.test) if spec.healthcheck else (),
        image_digest=image_digest,
    )


def observed_facts(attrs: Mapping[str, Any], declared_env: set[str], image_env: Mapping[str, str],
                   image_labels: Mapping[str, str] | None = None) -> Facts:
    """Facts of a live container from its inspect data. Only declared keys and keys the image does not set itself
    count as its environment, and labels the image carries are the image's, so image defaults (PATH, PGDATA, a
    maintainer label, ...) are not reported as drift."""
    config = attrs.get("Config") or {}
    host = attrs.get("HostConfig") or {}
    env = {}
    for item in config.get("Env") or []:
        key, _, value = item.partition("=")
        if key in declared_env or image_env.get(key) != value:
            env[key] = sha256_hex(value)
    ports = []
    for container_port, bindings in (host.get("PortBindings") or {}).items():
        port, _, proto = container_port.partition("/")
        for b in bindings or []:
            host_ip = b.get("HostIp") or "0.0.0.0"
            shown = f"[{host_ip}]" if ":" in host_ip else host_ip
            # the *requested* binding: "" (or "0") asks the Engine to pick the host port, as a spec's port 0 does
            ports.append(f"{shown}:{_requested_host_port(b)}->{port}/{proto or 'tcp'}")
    mounts = []
    for m in attrs.get("Mounts") or []:
        if m.get("Type") == "bind":
            mounts.append(f"bind:{m.get('Source')}:{m.get('Destination')}:{'rw' if m.get('RW', True) else 'ro'}")
        elif m.get("Type") == "volume" and m.get("Name") and not _anonymous(m):
            mounts.append(f"volume:{m.get('Name')}:{m.get('Destination')}:{'rw' if m.get('RW', True) else 'ro'}")
    policy = host.get("RestartPolicy") or {}
    restart = policy.get("Name") or "no"
    if restart == "on-failure" and policy.get("MaximumRetryCount"):
        restart = f"on-failure:{policy['MaximumRetryCount']}"
    labels = tuple(sorted((k, v) for k, v in (config.get("Labels") or {}).items()
                          if not k.startswith(ENGINE_LABEL_PREFIXES) and (image_labels or {}).get(k) != v))
    health = (config.get("Healthcheck") or {}).get("Test") or []
    nets = (attrs.get("NetworkSettings") or {}).get("Networks") or {}
    state = attrs.get("State") or {}
    return Facts(
        image_id=attrs.get("Image", ""),
        command=tuple(config.get("Cmd") or ()),
        env=tuple(sorted(env.items())),
        ports=tuple(sorted(ports)),
        mounts=tuple(sorted(mounts)),
        networks=tuple(sorted(nets)),
        restart=restart,
        user=config.get("User") or "",
        labels=labels,
        healthcheck=tuple(health),
        running=bool(state.get("Running")) and not state.get("Restarting"),
        image_digest=(config.get("Labels") or {}).get(LABEL_IMAGE_DIGEST, ""),
    )


def _anonymous(mount: Mapping[str, Any]) -> bool:
    # Anonymous volumes (an image's VOLUME) have 64-hex names; they are the image's business, not drift.
    name = mount.get("Name") or ""
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)


# -- reads of the Engine -----------------------------------------------------------------------------------------------
def live_containers(client: docker.DockerClient, project: str, declared_env: Mapping[str, set[str]] | None = None,
                    service: str | None = None) -> dict[str, Live]:
    """Managed containers of `project` (or of its one `service`), by service: one list call, filtered by label,
    with each container's inspect data."""
    out: dict[str, Live] = {}
    image_envs: dict[str, tuple[dict[str, str], dict[str, str]]] = {}
    labels_wanted = [f"{LABEL_PROJECT}={project}"] + ([f"{LABEL_SERVICE}={service}"] if service else [])
    for c in client.containers.list(all=True, filters={"label": labels_wanted}):
        labels = c.labels
        name = labels.get(LABEL_SERVICE)
        if not name or "-prodg-previous-" in c.name or c.name.endswith("-prodg-candidate"):
            continue
        image = c.attrs.get("Image", "")
        if image not in image_envs:
            image_envs[image] = image_env(client, image)
        env, labels_of_image = image_envs[image]
        facts = observed_facts(c.attrs, (declared_env or {}).get(name, set()), env, labels_of_image)
        out[name] = Live(name, c.id, c.name, labels.get(LABEL_SPEC_HASH, ""), labels.get(LABEL_COMMIT, ""), facts)
    return out


def live_commit(client: docker.DockerClient, project: str, spec: ServiceSpec) -> str:
    """The commit that created the service's current container ("" when there is none): one inspect, no facts."""
    try:
        labels = client.api.inspect_container(spec.container_name)["Config"].get("Labels") or {}
    except errors.NotFound:
        return ""
    return labels.get(LABEL_COMMIT, "") if labels.get(LABEL_PROJECT) == project else ""


def container_health(client: docker.DockerClient, project: str, spec: ServiceSpec) -> tuple[list[str], str]:
    """(problems, status) of the service's container as the Engine sees it: missing, not running (its exit code,
    OOM), restarting, or unhealthy by its own healthcheck (with the last probe's output). Status is the Engine's
    ("running", "exited", …), with the health when the container has a healthcheck ("running (healthy)")."""
    try:
        attrs = client.api.inspect_container(spec.container_name)
    except errors.NotFound:
        return [f"no container {spec.container_name}: deploy the service"], "missing"
    if ((attrs.get("Config") or {}).get("Labels") or {}).get(LABEL_PROJECT) != project:
        return [f"{spec.container_name} is not one of project {project}'s containers"], "foreign"
    state = attrs.get("State") or {}
    status, health = state.get("Status", "?"), (state.get("Health") or {})
    shown = f"{status} ({health['Status']})" if health.get("Status") else status
    if state.get("Restarting"):
        return [f"restarting (exit code {state.get('ExitCode')}, {attrs.get('RestartCount', 0)} restarts)"], shown
    if not state.get("Running"):
        oom = ", killed for lack of memory" if state.get("OOMKilled") else ""
        return [f"not running: {status} with exit code {state.get('ExitCode')}{oom}, at "
                f"{str(state.get('FinishedAt', '?'))[:19]}Z"], shown
    if health.get("Status") == "unhealthy":
        last = (health.get("Log") or [{}])[-1]
        output = " ".join(str(last.get("Output", "")).split())[:300]
        return [f"unhealthy by its own healthcheck ({health.get('FailingStreak', 0)} failures in a row): "
                f"{output or 'no output'}"], shown
    return [], shown


def bind_sources(client: docker.DockerClient) -> set[str]:
    """The host path of every bind mount of every container on the Engine, stopped ones included (a previous
    container kept for a rollback still needs its files)."""
    sources = set()
    for c in client.api.containers(all=True):
        sources |= {m.get("Source", "") for m in c.get("Mounts") or [] if m.get("Type") == "bind"}
    return sources - {""}


def image_env(client: docker.DockerClient, image: str) -> tuple[dict[str, str], dict[str, str]]:
    """(env, labels) the image itself sets."""
    try:
        config = client.api.inspect_image(image).get("Config") or {}
    except errors.NotFound:
        return {}, {}
    return dict(item.partition("=")[::2] for item in config.get("Env") or []), dict(config.get("Labels") or {})


def image_id(client: docker.DockerClient, ref: str) -> Optional[str]:
    try:
        return client.api.inspect_image(ref)["Id"]
    except (errors.ImageNotFound, errors.NotFound):
        return None


def network_facts(client: docker.DockerClient, name: str) -> Optional[dict]:
    try:
        return client.api.inspect_network(name)
    except errors.NotFound:
        return None


@dataclass(frozen=True)
class DataSource:
    """A data store's container as a backup names its source."""

    description: str
    image_id: str
    running: bool
    image_digest: str = ""  # the registry digest it was pulled as ("" for a local image)


def container_source(client: docker.DockerClient, container: str) -> DataSource:
    """A data store's container (description, image id, running, image digest), from docker inspect."""
    try:
        attrs = client.api.inspect_container(container)
    except errors.NotFound:
        return DataSource(f"{container} (no such container)", "", False)
    image = attrs.get("Image", "")
    labels = (attrs.get("Config") or {}).get("Labels") or {}
    return DataSource(f"{container} @ {image}", image, bool((attrs.get("State") or {}).get("Running")),
                      labels.get(LABEL_IMAGE_DIGEST, ""))


def _requested_host_port(binding: Mapping[str, Any]) -> str:
    """A PortBindings entry's host port as asked for: "0" when the Engine picks it ("" or "0" in the Engine)."""
    return str(binding.get("HostPort") or "0").strip() or "0"


def published_port(attrs: Mapping[str, Any], container_port: int, protocol: str = "tcp",
                   host_ip: str = "") -> Optional[int]:
    """The host port the Engine actually published `container_port/protocol` on (NetworkSettings.Ports: set while
    the container runs) — the one an Engine-picked publication got; of the binding on `host_ip` when given."""
    bindings = ((attrs.get("NetworkSettings") or {}).get("Ports") or {}).get(f"{container_port}/{protocol}") or []
    for b in bindings:
        ip = b.get("HostIp") or "0.0.0.0"
        if host_ip and ip != host_ip and not (host_ip in ("0.0.0.0", "::") and ip in ("0.0.0.0", "::")):
            continue
        if str(b.get("HostPort") or "").isdigit() and int(b["HostPort"]) > 0:
            return int(b["HostPort"])
    return None


def exposed_ports(client: docker.DockerClient, project: str) -> list[tuple[str, str, str]]:
    """(container, "port/proto", host ip) of every publication on a wildcard address, for managed containers (an
    Engine-picked host port as published, or "0/proto" while it is not)."""
    out = []
    for c in client.containers.list(filters={"label": f"{LABEL_PROJECT}={project}"}):
        for container_port, bindings in (c.attrs.get("HostConfig", {}).get("PortBindings") or {}).items():
            for b in bindings or []:
                ip = b.get("HostIp") or "0.0.0.0"
                if ip in ("0.0.0.0", "::"):
                    port, _, proto = container_port.partition("/")
                    host_port = _requested_host_port(b)
                    if host_port == "0" and port.isdigit():
                        host_port = str(published_port(c.attrs, int(port), proto or "tcp", ip) or 0)
                    out.append((c.name, f"{host_port}/{proto or 'tcp'}", ip))
    return sorted(out)


def root_processes(client: docker.DockerClient, project: str) -> dict[str, int]:
    """Service → how many of its running container's processes run as uid 0, for every running managed container
    (0: none). Read with the Engine's `top`, so an image that starts as root and drops to its own user (postgres,
    su-exec, setpriv) counts by what it runs as, not by what it starts as."""
    out: dict[str, int] = {}
    for c in client.containers.list(filters={"label": f"{LABEL_PROJECT}={project}"}):
        try:
            top = client.api.top(c.id, ps_args="-o uid,pid")
        except errors.APIError:  # it stopped between the list and the top
            continue
        column = (top.get("Titles") or ["UID"]).index("UID") if "UID" in (top.get("Titles") or []) else 0
        out[c.labels.get(LABEL_SERVICE, c.name)] = sum(1 for row in top.get("Processes") or []
                                                        if str(row[column]).strip() == "0")
    return out


_CONTAINER_ID = re.compile(r"/containers/([0-9a-f]{64})/")


def own_container(mountinfo: str = "/proc/self/mountinfo") -> str:
    """The id of the container this process runs in ("" on the host): the Engine bind-mounts the container's own
    hostname, hosts and resolv.conf from /var/lib/docker/containers/<id>/, which the mount table shows."""
    try:
        with open(mountinfo, encoding="utf-8", errors="replace") as fh:
            match = _CONTAINER_ID.search(fh.read())
    except OSError:
        return ""
    return match.group(1) if match else ""


def join_network(client: docker.DockerClient, network: str, container: str) -> str:
    """Attach `container` (prodg's own run container) to `network` unless it is already there; what was done, or
    why not: "joined", "already", "no such network" (the mainframe's network is made by the first deploy)."""
    try:
        net = client.networks.get(network)
    except errors.NotFound:
        return "no such network"
    attached = ((client.api.inspect_container(container).get("NetworkSettings") or {}).get("Networks") or {})
    if network in attached or net.name in attached:
        return "already"
    net.connect(container)
    return "joined"


def endpoint(client: docker.DockerClient, probe_network: str, spec: ServiceSpec, container_port: int,
             protocol: str = "tcp") -> Optional[tuple[str, int]]:
    """(host, port) where `container_port` of the service answers from here: its publication on the host when it
    has one (wildcard publications are reached on loopback; an Engine-picked host port is read back from the
    running container), else — or always, when `probe_network` is set because prodg itself runs in a container —
    the container's address on its network."""
    attrs: Optional[Mapping[str, Any]] = None
    for p in () if probe_network else spec.ports:
        if p.container_port == container_port and p.protocol == protocol:
            host = "127.0.0.1" if p.host_ip in ("0.0.0.0", "127.0.0.1") else "::1" if p.host_ip == "::" \
                else p.host_ip
            if not p.engine_picked:
                return host, p.host_port
            try:
                attrs = client.api.inspect_container(spec.container_name)
            except Exception:
                return None
            picked = published_port(attrs, container_port, protocol, p.host_ip)
            if picked:
                return host, picked
            break  # not published (the container is not running): its network address, as below
    try:
        attrs = attrs or client.api.inspect_container(spec.container_name)
    except Exception:
        return None
    for name, net in (attrs.get("NetworkSettings") or {}).get("Networks", {}).items():
        if net.get("IPAddress") and probe_network in ("", name):
            return net["IPAddress"], container_port
    return None


# -- what the host's env files hold ------------------------------------------------------------------------------------
def file_env(spec: ServiceSpec, strict: bool = False) -> dict[str, str]:
    """What the service's env_files hold (later files win). A missing file is an error when applying."""
    env: dict[str, str] = {}
    for path in spec.env_files:
        try:
            with open(path, encoding="utf-8") as fh:
                env.update(parse_env_file(fh.read()))
        except FileNotFoundError:
            if strict:
                raise ApplyFailed(spec.name, f"env_file {path} does not exist") from None
    return env


def declared_env(state: DesiredState) -> dict[str, set[str]]:
    """The environment keys each service declares (its `environment` and its env files)."""
    return {n: {k for k, _ in s.environment} | set(file_env(s)) for n, s in state.services.items()}


def network_subnets(client: docker.DockerClient) -> list[tuple[str, Any]]:
    """(network name, subnet) for every subnet the Engine's networks hold (their IPAM config)."""
    out = []
    for net in client.networks.list():
        for config in (net.attrs.get("IPAM") or {}).get("Config") or []:
            try:
                out.append((net.name, ipaddress.ip_network(config.get("Subnet") or "", strict=False)))
            except ValueError:
                pass
    return out
