"""The planner as a table: each case is a desired spec, the live container's `docker inspect` data, and the action the
planner must choose (pyinfra-style: inputs, current facts, expected action, idempotent yes/no).

The live container is built from a spec by `container_attrs` — what DockerEngine._create would have produced, with the
Engine's own merging (image env under the container's, image labels under the container's, image Cmd/Healthcheck/User
when the spec leaves them out, anonymous volumes for the image's VOLUMEs) — so an "unchanged" case is honest, and a
drift case is that container with one hand edit. Pure code: no Docker Engine is needed.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Optional

import pytest

from prodg_assets.contract import (
    LABEL_COMMIT,
    LABEL_PROJECT,
    LABEL_SERVICE,
    LABEL_SPEC_HASH,
)
from prodg_assets.desired.interpolate import resolve_env
from prodg_assets.desired.model import Healthcheck, Mount, Port, ServiceSpec
from prodg_assets.engine.facts import desired_facts, observed_facts
from prodg_assets.engine.plan import (
    CREATE,
    ORPHAN,
    RECREATE,
    REMOVE,
    UNCHANGED,
    Action,
    Desired,
    Live,
    Plan,
    plan,
    plan_service,
)

PROJECT = "prodg"
COMMIT = "3f9c1e0a7b5d2c4e6f8091a2b3c4d5e6f7081920"


def _hex(seed: str) -> str:
    return hashlib.sha256(seed.encode()).hexdigest()


# -- images: what `docker image inspect` says about them --------------------------------------------------------------


@dataclass(frozen=True)
class Image:
    id: str
    env: Mapping[str, str]
    cmd: tuple[str, ...]
    entrypoint: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    user: str = ""
    healthcheck: Optional[Mapping[str, Any]] = None
    volumes: tuple[str, ...] = ()


PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
POSTGRES_16 = Image(
    id="sha256:" + _hex("postgres:16.4-alpine"),
    env={"PATH": PATH, "GOSU_VERSION": "1.17", "LANG": "en_US.utf8", "PG_MAJOR": "16", "PG_VERSION": "16.4",
         "PG_SHA256": _hex("postgresql-16.4.tar.bz2"), "DOCKER_PG_LLVM_DEPS": "llvm15-dev \t\tclang15",
         "PGDATA": "/var/lib/postgresql/data"},
    cmd=("postgres",),
    entrypoint=("docker-entrypoint.sh",),
    volumes=("/var/lib/postgresql/data",),
)
# The same tag before `docker pull` moved it: an older patch release with its own defaults.
POSTGRES_16_OLD = replace(POSTGRES_16, id="sha256:" + _hex("postgres:16.3-alpine"),
                          env={**POSTGRES_16.env, "PG_VERSION": "16.3", "PG_SHA256": _hex("postgresql-16.3.tar.bz2")})
# A local stand-in that brings its own USER and HEALTHCHECK.
POSTGRES_STANDIN = Image(
    id="sha256:" + _hex("prodg/postgres:bookworm"),
    env={"PATH": PATH, "PGDATA": "/var/lib/postgresql/data"},
    cmd=(),
    entrypoint=("/usr/local/bin/prodg-postgres",),
    user="postgres",
    healthcheck={"Test": ["CMD-SHELL", "pg_isready -h 127.0.0.1"], "Interval": 5_000_000_000, "Retries": 10},
)
PROMETHEUS = Image(
    id="sha256:" + _hex("prom/prometheus:v2.53.1"),
    env={"PATH": PATH},
    cmd=("--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"),
    entrypoint=("/bin/prometheus",),
    labels={"maintainer": "The Prometheus Authors <prometheus-developers@googlegroups.com>"},
    user="nobody",
    volumes=("/prometheus",),
)
REDIS_7 = Image(
    id="sha256:" + _hex("redis:7.2.5-alpine"),
    env={"PATH": PATH, "REDIS_VERSION": "7.2.5",
         "REDIS_DOWNLOAD_URL": "http://download.redis.io/releases/redis-7.2.5.tar.gz"},
    cmd=("redis-server",),
    entrypoint=("docker-entrypoint.sh",),
    volumes=("/data",),
)
IMAGES = {i.id: i for i in (POSTGRES_16, POSTGRES_16_OLD, POSTGRES_STANDIN, PROMETHEUS, REDIS_7)}


# -- specs: one base, every case a replace() of it ---------------------------------------------------------------------

PG_PASSWORD = "pg-Plan-Secret-31d9c"
PG_PASSWORD_ROTATED = "pg-Rotated-Secret-88ab4"
SECRETS = {"POSTGRES_PASSWORD": PG_PASSWORD}
ROTATED = {"POSTGRES_PASSWORD": PG_PASSWORD_ROTATED}
ALL_SECRET_VALUES = (PG_PASSWORD, PG_PASSWORD_ROTATED)

BASE = ServiceSpec(
    name="postgres",
    container_name="postgres",
    layer="data_stores",
    image="postgres:16-alpine",
    environment=(
        ("POSTGRES_DB", "prodg"),
        ("POSTGRES_INITDB_ARGS", "--data-checksums"),
        ("POSTGRES_PASSWORD", "${POSTGRES_PASSWORD}"),
        ("POSTGRES_USER", "prodg"),
    ),
    ports=(Port("127.0.0.1", 5432, 5432),),
    volumes=(
        Mount("volume", "prodg_pgdata", "/var/lib/postgresql/data"),
        Mount("bind", "/opt/prodg/deployed/postgres/init.sql", "/docker-entrypoint-initdb.d/init.sql",
              read_only=True, config_path="postgres/init.sql#0f3c2a9b1d4e5f60"),
    ),
    networks=(("prodg_backend", ("db",)),),
    healthcheck=Healthcheck(("CMD-SHELL", "pg_isready -U prodg -d prodg"), 10.0, 5.0, 5, 20.0),
    restart="unless-stopped",
    labels=(("backup.role", "pg_dumpall"),),
    trust_tier="T1",
)
WITH_INITDB_ARGS = replace(BASE, environment=tuple(
    (k, "--data-checksums --auth-host=scram-sha-256" if k == "POSTGRES_INITDB_ARGS" else v)
    for k, v in BASE.environment))
NO_COMMAND = replace(BASE, command=None)
WITH_COMMAND = replace(BASE, command=("postgres", "-c", "max_connections=200"))
NO_HEALTHCHECK = replace(BASE, healthcheck=None)
DECLARES_PGDATA = replace(BASE, environment=tuple(sorted(BASE.environment + (("PGDATA", "/var/lib/postgresql/data"),))))
ON_FAILURE_3 = replace(BASE, restart="on-failure:3")
RESTART_NO = replace(BASE, restart="no")
ON_IPV6_TOO = replace(BASE, ports=(Port("127.0.0.1", 5432, 5432), Port("::1", 5432, 5432)))
ENGINE_PICKED = replace(BASE, ports=(Port("127.0.0.1", 0, 5432),))  # 127.0.0.1::5432: the Engine picks the port
PICKED_PORT = "49153"  # what the Engine picked, in the fakes below
TWO_NETWORKS = replace(BASE, networks=(("prodg_backend", ("db",)), ("prodg_monitoring", ())))
AS_USER = replace(BASE, user="70:70")
WITH_ENV_FILE = replace(BASE, env_files=("/etc/prodg/postgres.env",))
ENV_FILE_VALUES = {"POSTGRES_HOST_AUTH_METHOD": "scram-sha-256", "TZ": "Europe/Berlin"}
OCI_LABEL = replace(BASE, labels=(("backup.role", "pg_dumpall"),
                                  ("org.opencontainers.image.source", "https://github.com/prodg/infra")))
PROMETHEUS_SPEC = replace(
    BASE, name="prometheus", container_name="prometheus", layer="observability", image="prom/prometheus:latest",
    environment=(), ports=(), healthcheck=None, labels=(), trust_tier="T2",
    volumes=(Mount("bind", "/opt/prodg/deployed/prometheus/prometheus.yml", "/etc/prometheus/prometheus.yml",
                   read_only=True, config_path="prometheus/prometheus.yml#9a8b7c6d5e4f3a2b"),
             Mount("volume", "prodg_prometheus", "/prometheus")),
    networks=(("prodg_monitoring", ()),),
)
REDIS_SPEC = replace(
    BASE, name="redis", container_name="redis", image="redis:7-alpine",
    command=("sh", "-c", 'exec redis-server --appendonly yes --requirepass "$REDIS_PASSWORD"'),
    environment=(("REDIS_PASSWORD", "${REDIS_PASSWORD}"),), ports=(Port("127.0.0.1", 6379, 6379),),
    volumes=(), healthcheck=Healthcheck(("CMD-SHELL", 'redis-cli -a "$REDIS_PASSWORD" --no-auth-warning ping'),
                                        1.0, 5.0, 30), labels=(),
)


# -- the live container: what the Engine reports for a container created from a spec ----------------------------------


def _restart_policy(restart: str) -> dict:
    name, _, count = restart.partition(":")
    return {"Name": name, "MaximumRetryCount": int(count or 0)}


def _ns(seconds: float) -> int:
    return int(seconds * 1_000_000_000)


def container_attrs(spec: ServiceSpec, secrets: Mapping[str, str], image: Image, *, commit: str = COMMIT,
                    env_file: Mapping[str, str] | None = None) -> dict[str, Any]:
    """`docker inspect` of the container DockerEngine._create makes for `spec`, started and running."""
    env = {**(env_file or {}), **resolve_env(spec, secrets)}  # as _create: the spec's environment wins
    # as the daemon merges them: the container's env, then every image key the container does not set
    env_list = [f"{k}={v}" for k, v in env.items()] + [f"{k}={v}" for k, v in image.env.items() if k not in env]
    # the daemon copies every image label the container does not set (moby daemon/commit.go merge)
    labels = {**image.labels, **dict(spec.labels), LABEL_PROJECT: PROJECT, LABEL_SERVICE: spec.name,
              LABEL_SPEC_HASH: spec.spec_hash(secrets, env_file), LABEL_COMMIT: commit}
    if spec.healthcheck:
        h = spec.healthcheck
        health = {"Test": list(h.test), "Interval": _ns(h.interval_s), "Timeout": _ns(h.timeout_s),
                  "StartPeriod": _ns(h.start_period_s), "Retries": h.retries}
    else:
        health = copy.deepcopy(image.healthcheck)
    bindings: dict[str, list[dict[str, str]]] = {}
    published: dict[str, list[dict[str, str]]] = {}  # NetworkSettings.Ports: what the running container got
    for p in spec.ports:
        # an Engine-picked port is requested as HostPort "" (docker-py's None) and published on a port it chose
        bindings.setdefault(f"{p.container_port}/{p.protocol}", []).append(
            {"HostIp": p.host_ip, "HostPort": "" if p.host_port == 0 else str(p.host_port)})
        published.setdefault(f"{p.container_port}/{p.protocol}", []).append(
            {"HostIp": p.host_ip, "HostPort": PICKED_PORT if p.host_port == 0 else str(p.host_port)})
    mounts = []
    for m in spec.volumes:
        mode = "ro" if m.read_only else "rw"
        if m.kind == "bind":
            mounts.append({"Type": "bind", "Source": m.source, "Destination": m.target, "Mode": mode,
                           "RW": not m.read_only, "Propagation": "rprivate"})
        else:
            mounts.append({"Type": "volume", "Name": m.source, "Source": f"/var/lib/docker/volumes/{m.source}/_data",
                           "Destination": m.target, "Driver": "local", "Mode": mode, "RW": not m.read_only,
                           "Propagation": ""})
    for target in image.volumes:  # the image's VOLUMEs nobody mounted over: anonymous volumes
        if not any(m.target == target for m in spec.volumes):
            anon = _hex(f"{spec.container_name}:{target}")
            mounts.append({"Type": "volume", "Name": anon, "Source": f"/var/lib/docker/volumes/{anon}/_data",
                           "Destination": target, "Driver": "local", "Mode": "", "RW": True, "Propagation": ""})
    networks = {}
    for i, (name, aliases) in enumerate(spec.networks):
        networks[name] = {
            "IPAMConfig": None, "Links": None, "Aliases": [spec.name, *aliases],
            "MacAddress": f"02:42:ac:14:00:0{i + 5}",
            "NetworkID": _hex(name), "EndpointID": _hex(f"{spec.name}@{name}"), "Gateway": f"172.2{i}.0.1",
            "IPAddress": f"172.2{i}.0.5", "IPPrefixLen": 16, "IPv6Gateway": "", "GlobalIPv6Address": "",
            "GlobalIPv6PrefixLen": 0, "DriverOpts": None, "DNSNames": [spec.container_name, spec.name, *aliases],
        }
    cid = _hex(f"container:{spec.container_name}:{spec.spec_hash(secrets)}")
    return {
        "Id": cid,
        "Created": "2024-09-14T03:00:12.345678901Z",
        "Path": (image.entrypoint or (spec.command or image.cmd))[0],
        "Args": list((image.entrypoint[1:] if image.entrypoint else ()) + (spec.command or image.cmd)),
        "State": {"Status": "running", "Running": True, "Paused": False, "Restarting": False, "OOMKilled": False,
                  "Dead": False, "Pid": 48211, "ExitCode": 0, "Error": "",
                  "StartedAt": "2024-09-14T03:00:13.012345678Z", "FinishedAt": "0001-01-01T00:00:00Z",
                  **({"Health": {"Status": "healthy", "FailingStreak": 0, "Log": []}} if health else {})},
        "Image": image.id,
        "Name": f"/{spec.container_name}",
        "RestartCount": 0,
        "HostConfig": {
            "Binds": [f"{m.source}:{m.target}:{'ro' if m.read_only else 'rw'}" for m in spec.volumes],
            "NetworkMode": spec.networks[0][0] if spec.networks else "bridge",
            "PortBindings": bindings,
            "RestartPolicy": _restart_policy(spec.restart),
            "AutoRemove": False,
            "Privileged": False,
            "LogConfig": {"Type": "json-file", "Config": {}},
        },
        "Mounts": mounts,
        "Config": {
            "Hostname": cid[:12],
            "User": spec.user or image.user,
            "ExposedPorts": {f"{p.container_port}/{p.protocol}": {} for p in spec.ports},
            "Env": env_list,
            "Cmd": list(spec.command) if spec.command is not None else list(image.cmd) or None,
            "Healthcheck": health,
            "Image": spec.image,
            "Volumes": {v: {} for v in image.volumes} or None,
            "WorkingDir": "",
            "Entrypoint": list(image.entrypoint) or None,
            "Labels": labels,
        },
        "NetworkSettings": {"Bridge": "", "SandboxID": _hex(f"sandbox:{cid}"), "Ports": published,
                            "Networks": networks},
    }


def live_of(attrs: Mapping[str, Any], spec: ServiceSpec, file_env: Optional[Mapping[str, str]] = None) -> Live:
    """As DockerEngine.live: labels say which service; the container's image says which env and labels are the
    image's own; the declared env is the spec's environment and its env_files' keys."""
    labels = attrs["Config"]["Labels"]
    image = IMAGES.get(attrs["Image"])
    declared = {k for k, _ in spec.environment} | set(file_env or {})
    facts = observed_facts(attrs, declared, dict(image.env) if image else {}, dict(image.labels) if image else {})
    return Live(labels[LABEL_SERVICE], attrs["Id"], attrs["Name"].lstrip("/"), labels.get(LABEL_SPEC_HASH, ""),
                labels.get(LABEL_COMMIT, ""), facts)


def desired_of(spec: ServiceSpec, secrets: Mapping[str, str], image: Image,
               file_env: Optional[Mapping[str, str]] = None) -> Desired:
    """As DockerEngine.desired."""
    return Desired(spec.name, spec.spec_hash(secrets, file_env), desired_facts(spec, secrets, image.id, file_env))


# -- hand edits to a live container ------------------------------------------------------------------------------------

Edit = Callable[[dict], None]


def at(path: str, value: Any) -> Edit:
    """Set one value in the inspect data; `path` is dot-separated (list indices as numbers)."""
    *parents, last = path.split(".")

    def edit(attrs: dict) -> None:
        node: Any = attrs
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[int(last) if isinstance(node, list) else last] = value

    return edit


def drop_label(name: str) -> Edit:
    return lambda attrs: attrs["Config"]["Labels"].pop(name)


def set_label(name: str, value: str) -> Edit:  # label keys contain dots: not for `at`
    return lambda attrs: attrs["Config"]["Labels"].__setitem__(name, value)


def add_env(item: str) -> Edit:
    return lambda attrs: attrs["Config"]["Env"].append(item)


STOPPED = {"Status": "exited", "Running": False, "Paused": False, "Restarting": False, "OOMKilled": False,
           "Dead": False, "Pid": 0, "ExitCode": 137, "Error": "", "StartedAt": "2024-09-14T03:00:13.012345678Z",
           "FinishedAt": "2024-09-15T11:42:07.000000000Z"}
CRASH_LOOP = {**STOPPED, "Status": "restarting", "Running": True, "Restarting": True, "ExitCode": 1}
BRIDGE = {"IPAMConfig": None, "Links": None, "Aliases": None, "MacAddress": "02:42:ac:11:00:03",
          "NetworkID": _hex("bridge"), "EndpointID": _hex("postgres@bridge"), "Gateway": "172.17.0.1",
          "IPAddress": "172.17.0.3", "IPPrefixLen": 16, "IPv6Gateway": "", "GlobalIPv6Address": "",
          "GlobalIPv6PrefixLen": 0, "DriverOpts": None, "DNSNames": None}


# -- the table ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    kind: str
    fields: tuple[str, ...] = ()  # diff fields, in order
    reasons: tuple[str, ...] = ()
    spec: ServiceSpec = BASE  # what the spec wants now
    secrets: Mapping[str, str] = field(default_factory=lambda: SECRETS)
    image: Image = POSTGRES_16  # the image the spec's reference resolves to now
    deployed: Optional[ServiceSpec] = None  # what the container was created from (None: `spec`)
    deployed_secrets: Optional[Mapping[str, str]] = None
    deployed_image: Optional[Image] = None
    edits: tuple[Edit, ...] = ()  # by hand, after it was created
    exists: bool = True
    env_file: Optional[Mapping[str, str]] = None  # contents of the spec's env_files, as the Engine read them

    def live(self) -> Optional[Live]:
        if not self.exists:
            return None
        attrs = container_attrs(self.deployed or self.spec, self.deployed_secrets or self.secrets,
                                self.deployed_image or self.image, env_file=self.env_file)
        for edit in self.edits:
            edit(attrs)
        return live_of(attrs, self.spec, self.env_file)

    def desired(self) -> Desired:
        return desired_of(self.spec, self.secrets, self.image, self.env_file)

    def converged(self) -> Live:
        """The container after the action is applied: created from the desired spec, no hand edits."""
        return live_of(container_attrs(self.spec, self.secrets, self.image, env_file=self.env_file), self.spec,
                       self.env_file)


SPEC_CHANGED = "spec changed"
NOT_RUNNING = "container is not running"
NOT_MANAGED = "container not managed by prodg (no spec-hash label)"

CASES = [
    # nothing there yet
    Case("no container", CREATE, reasons=("no container",), exists=False),
    # converged
    Case("identical", UNCHANGED),
    Case("image env defaults (PATH, PGDATA) are not drift", UNCHANGED, image=POSTGRES_16),
    Case("declared key equal to the image default", UNCHANGED, spec=DECLARES_PGDATA),
    Case("command not declared: image Cmd is not drift", UNCHANGED, spec=NO_COMMAND),
    Case("command declared and matching", UNCHANGED, spec=WITH_COMMAND),
    Case("healthcheck not declared: image healthcheck is not drift", UNCHANGED, spec=NO_HEALTHCHECK,
         image=POSTGRES_STANDIN),
    Case("user not declared: image USER is not drift", UNCHANGED, spec=NO_HEALTHCHECK, image=POSTGRES_STANDIN),
    Case("user declared and matching", UNCHANGED, spec=AS_USER),
    Case("restart on-failure:3", UNCHANGED, spec=ON_FAILURE_3),
    Case("restart no", UNCHANGED, spec=RESTART_NO),
    Case("restart no, reported by an older Engine as ''", UNCHANGED, spec=RESTART_NO,
         edits=(at("HostConfig.RestartPolicy", {"Name": "", "MaximumRetryCount": 0}),)),
    Case("ipv6 port binding", UNCHANGED, spec=ON_IPV6_TOO),
    Case("engine-picked host port is not drift", UNCHANGED, spec=ENGINE_PICKED),
    Case("engine-picked host port, requested as '0'", UNCHANGED, spec=ENGINE_PICKED,
         edits=(at("HostConfig.PortBindings.5432/tcp.0.HostPort", "0"),)),
    Case("two networks", UNCHANGED, spec=TWO_NETWORKS),
    Case("image's anonymous volume is not drift", UNCHANGED, spec=REDIS_SPEC, image=REDIS_7,
         secrets={"REDIS_PASSWORD": "redis-Plan-Secret-77e2"}),
    Case("env_file keys are not drift", UNCHANGED, spec=WITH_ENV_FILE, env_file=ENV_FILE_VALUES),
    Case("image labels are not drift", UNCHANGED, spec=PROMETHEUS_SPEC, image=PROMETHEUS),
    Case("declared org.opencontainers label", UNCHANGED, spec=OCI_LABEL),
    # the spec moved
    Case("env value changed", RECREATE, ("env",), (SPEC_CHANGED,), spec=WITH_INITDB_ARGS, deployed=BASE),
    Case("secret rotated", RECREATE, ("env",), (SPEC_CHANGED,), secrets=ROTATED, deployed_secrets=SECRETS),
    Case("command declared where the image default ran", RECREATE, ("command",), (SPEC_CHANGED,),
         spec=WITH_COMMAND, deployed=NO_COMMAND),
    Case("network added to the spec", RECREATE, ("networks",), (SPEC_CHANGED,), spec=TWO_NETWORKS, deployed=BASE),
    Case("image id differs (tag moved by a pull)", RECREATE, ("image_id",), deployed_image=POSTGRES_16_OLD),
    Case("fixed host port made engine-picked", RECREATE, ("ports",), (SPEC_CHANGED,), spec=ENGINE_PICKED,
         deployed=BASE),
    Case("engine-picked host port made fixed", RECREATE, ("ports",), (SPEC_CHANGED,), deployed=ENGINE_PICKED),
    # changed by hand
    Case("port host_ip changed by hand", RECREATE, ("ports",),
         edits=(at("HostConfig.PortBindings.5432/tcp.0.HostIp", "0.0.0.0"),)),
    Case("engine-picked port pinned by hand", RECREATE, ("ports",), spec=ENGINE_PICKED,
         edits=(at("HostConfig.PortBindings.5432/tcp.0.HostPort", "5432"),)),
    Case("restart policy changed by hand (docker update)", RECREATE, ("restart",),
         edits=(at("HostConfig.RestartPolicy", {"Name": "always", "MaximumRetryCount": 0}),)),
    Case("container stopped", RECREATE, ("running",), (NOT_RUNNING,), edits=(at("State", STOPPED),)),
    Case("container restarting in a loop", RECREATE, ("running",), (NOT_RUNNING,), edits=(at("State", CRASH_LOOP),)),
    Case("extra network attached by hand", RECREATE, ("networks",),
         edits=(at("NetworkSettings.Networks.bridge", BRIDGE),)),
    Case("bind mount made rw", RECREATE, ("mounts",), edits=(at("Mounts.1.RW", True), at("Mounts.1.Mode", "rw"))),
    Case("env added by hand", RECREATE, ("env",), edits=(add_env("POSTGRES_HOST_AUTH_METHOD=trust"),)),
    Case("label changed by hand", RECREATE, ("labels",), edits=(set_label("backup.role", "none"),)),
    Case("no spec-hash label", RECREATE, (), (NOT_MANAGED,), edits=(drop_label(LABEL_SPEC_HASH),)),
    Case("stopped and drifted", RECREATE, ("restart", "running"), (NOT_RUNNING,),
         edits=(at("State", STOPPED), at("HostConfig.RestartPolicy", {"Name": "no", "MaximumRetryCount": 0}))),
]


def _secret_values(case: Case) -> set[str]:
    return {*ALL_SECRET_VALUES, *case.secrets.values(), *(case.deployed_secrets or {}).values()}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_plan_service(case: Case) -> None:
    action = plan_service(case.desired(), case.live())
    assert (action.kind, tuple(f for f, _, _ in action.diff), action.reasons) == \
           (case.kind, case.fields, case.reasons), action.markdown()
    assert action.service == case.spec.name
    assert action.changes == (case.kind in (CREATE, RECREATE))
    live = case.live()
    assert action.container_id == (live.container_id if live else None)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_idempotent(case: Case) -> None:
    """Planning twice gives the same action; once the action is applied, planning again gives unchanged."""
    assert plan_service(case.desired(), case.live()) == plan_service(case.desired(), case.live())
    after = plan_service(case.desired(), case.converged())
    assert (after.kind, after.reasons, after.diff) == (UNCHANGED, (), ()), after.markdown()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_no_secret_in_output(case: Case) -> None:
    """Actions, their markdown and the plan table carry env keys only: no secret value, in any case."""
    action = plan_service(case.desired(), case.live())
    live = case.live()
    shown = "\n".join([repr(action), action.markdown(), Plan([action]).table(), repr(case.desired().facts),
                       repr(live.facts) if live else ""])
    for value in _secret_values(case):
        assert value not in shown


ENV_ROWS = {  # case → (the key the env row names, its live cell, its desired cell, values that must not be shown)
    "env value changed": ("POSTGRES_INITDB_ARGS", "other value", "set", ("--data-checksums", "scram-sha-256")),
    "secret rotated": ("POSTGRES_PASSWORD", "other value", "set", (PG_PASSWORD, PG_PASSWORD_ROTATED)),
    "env added by hand": ("POSTGRES_HOST_AUTH_METHOD", "set", "absent", ("trust",)),
}


def test_env_rows_table_is_complete() -> None:
    assert set(ENV_ROWS) == {c.id for c in CASES if "env" in c.fields}


@pytest.mark.parametrize("case", [c for c in CASES if c.id in ENV_ROWS], ids=lambda c: c.id)
def test_env_diff_names_keys_not_values(case: Case) -> None:
    keys, live, desired, hidden = ENV_ROWS[case.id]
    action = plan_service(case.desired(), case.live())
    assert dict((f, (a, b)) for f, a, b in action.diff)["env"] == (f"{keys} ({live})", f"{keys} ({desired})")
    for text in (repr(action), action.markdown(), Plan([action]).table()):
        assert keys in text
        for value in hidden:
            assert value not in text


def test_secret_rotation_changes_hash_not_shown_values() -> None:
    assert BASE.spec_hash(SECRETS) != BASE.spec_hash(ROTATED)
    action = plan_service(desired_of(BASE, ROTATED, POSTGRES_16),
                          live_of(container_attrs(BASE, SECRETS, POSTGRES_16), BASE))
    assert action.kind == RECREATE and action.reasons == (SPEC_CHANGED,)
    assert action.diff == (("env", "POSTGRES_PASSWORD (other value)", "POSTGRES_PASSWORD (set)"),)
    for text in (repr(action), action.markdown(), Plan([action]).table()):
        assert PG_PASSWORD not in text and PG_PASSWORD_ROTATED not in text


def test_drift_rows_show_live_then_desired() -> None:
    attrs = container_attrs(BASE, SECRETS, POSTGRES_16)
    at("HostConfig.PortBindings.5432/tcp.0.HostIp", "0.0.0.0")(attrs)
    at("HostConfig.RestartPolicy", {"Name": "always", "MaximumRetryCount": 0})(attrs)
    action = plan_service(desired_of(BASE, SECRETS, POSTGRES_16), live_of(attrs, BASE))
    assert action.diff == (
        ("ports", "0.0.0.0:5432->5432/tcp", "127.0.0.1:5432->5432/tcp"),
        ("restart", "always", "unless-stopped"),
    )


# -- the whole plan ----------------------------------------------------------------------------------------------------

REDIS_SECRETS = {"REDIS_PASSWORD": "redis-Plan-Secret-77e2"}
HERMES = replace(BASE, name="hermes-api", container_name="hermes-api", image="prodg/hermes-api:3f9c1e0a7b5d",
                 layer="hermes", environment=(), volumes=(), ports=(Port("127.0.0.1", 8000, 8000),), labels=())


def _stack(prune: bool) -> Plan:
    """postgres converged, redis never created, caddy stopped, hermes-api left the spec but still runs."""
    caddy = replace(BASE, name="caddy", container_name="caddy", image="caddy:2", layer="tls", environment=(),
                    volumes=(), ports=(Port("0.0.0.0", 443, 443),), labels=(), healthcheck=None)
    caddy_attrs = container_attrs(caddy, {}, POSTGRES_16)
    caddy_attrs["State"] = STOPPED
    desired = {
        "postgres": desired_of(BASE, SECRETS, POSTGRES_16),
        "redis": desired_of(REDIS_SPEC, REDIS_SECRETS, REDIS_7),
        "caddy": desired_of(caddy, {}, POSTGRES_16),
    }
    live = {
        "postgres": live_of(container_attrs(BASE, SECRETS, POSTGRES_16), BASE),
        "caddy": live_of(caddy_attrs, caddy),
        "hermes-api": live_of(container_attrs(HERMES, {}, POSTGRES_16), HERMES),
    }
    return plan(desired, live, prune=prune)


@pytest.mark.parametrize("prune, leftover", [(False, ORPHAN), (True, REMOVE)])
def test_plan_service_left_the_spec(prune: bool, leftover: str) -> None:
    p = _stack(prune)
    assert [(a.service, a.kind) for a in p.actions] == [
        ("caddy", RECREATE), ("postgres", UNCHANGED), ("redis", CREATE), ("hermes-api", leftover)]
    gone = p.for_service("hermes-api")
    assert gone.container_id == container_attrs(HERMES, {}, POSTGRES_16)["Id"]
    assert gone.reasons == (("service left the spec",) if prune else
                            ("service left the spec; pruning is off (deploy.prune)",))
    assert [a.service for a in p.changes] == (["caddy", "redis", "hermes-api"] if prune else ["caddy", "redis"])


@pytest.mark.parametrize("prune", [False, True])
def test_plan_table_lists_every_service(prune: bool) -> None:
    p = _stack(prune)
    lines = p.table().splitlines()
    assert lines[0].split() == ["SERVICE", "ACTION", "WHY"]
    rows = {line.split()[0]: line.split()[1] for line in lines[1:]}
    assert rows == {a.service: a.kind for a in p.actions}
    assert len(lines) == 1 + len(p.actions)
    why = {line.split()[0]: line.split(None, 2)[2] for line in lines[1:]}
    assert why["postgres"] == "-"
    assert why["redis"] == "no container"
    assert why["caddy"] == "container is not running; running: False -> True"
    # columns line up: the ACTION column starts at the same offset on every line
    offsets = {line.index(line.split()[1], len(line.split()[0])) for line in lines}
    assert len(offsets) == 1
    for value in (*SECRETS.values(), *REDIS_SECRETS.values()):
        assert value not in p.table()


def test_plan_is_idempotent_across_the_stack() -> None:
    """Apply every change of the plan (as the Engine would), plan again: all unchanged, nothing left to do."""
    desired = {
        "postgres": (BASE, SECRETS, POSTGRES_16),
        "redis": (REDIS_SPEC, REDIS_SECRETS, REDIS_7),
        "pg-replica": (replace(NO_HEALTHCHECK, name="pg-replica", container_name="pg-replica"), SECRETS,
                       POSTGRES_STANDIN),
    }
    want = {name: desired_of(*args) for name, args in desired.items()}
    first = plan(want, {}, prune=True)
    assert {a.kind for a in first.actions} == {CREATE}
    applied = {name: live_of(container_attrs(*args), args[0]) for name, args in desired.items()}
    second = plan(want, applied, prune=True)
    assert [(a.service, a.kind) for a in second.actions] == [(n, UNCHANGED) for n in sorted(desired)]
    assert second.changes == []
    assert plan(want, applied, prune=True) == second


# -- Action.markdown ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("action, expected", [
    (Action("postgres", UNCHANGED), "**postgres**: unchanged"),
    (Action("redis", CREATE, ("no container",)), "**redis**: create (no container)"),
    (Action("postgres", RECREATE, (SPEC_CHANGED, NOT_RUNNING)),
     "**postgres**: recreate (spec changed; container is not running)"),
    (Action("postgres", RECREATE, (), (("ports", "0.0.0.0:5432->5432/tcp", "127.0.0.1:5432->5432/tcp"),
                                       ("restart", "always", "unless-stopped"))),
     "**postgres**: recreate\n\n| field | live | desired |\n|---|---|---|\n"
     "| ports | `0.0.0.0:5432->5432/tcp` | `127.0.0.1:5432->5432/tcp` |\n"
     "| restart | `always` | `unless-stopped` |"),
], ids=["unchanged", "create", "reasons only", "diff table"])
def test_action_markdown(action: Action, expected: str) -> None:
    assert action.markdown() == expected
