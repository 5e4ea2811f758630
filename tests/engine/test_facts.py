"""Facts, field by field: `resolve_env`, `desired_facts`, `observed_facts` on `docker inspect` data, `Facts.diff`."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from prodg_assets.desired.interpolate import resolve_env
from prodg_assets.desired.model import Port, sha256_hex
from prodg_assets.engine.facts import (
    Facts,
    desired_facts,
    endpoint,
    observed_facts,
    published_port,
)

from .test_plan import (
    AS_USER,
    BASE,
    BRIDGE,
    DECLARES_PGDATA,
    ENGINE_PICKED,
    NO_COMMAND,
    NO_HEALTHCHECK,
    ON_FAILURE_3,
    ON_IPV6_TOO,
    PG_PASSWORD,
    PICKED_PORT,
    POSTGRES_16,
    POSTGRES_STANDIN,
    REDIS_7,
    REDIS_SPEC,
    RESTART_NO,
    SECRETS,
    TWO_NETWORKS,
    WITH_COMMAND,
    _hex,
    container_attrs,
)

# -- resolve_env -------------------------------------------------------------------------------------------------------

DB_SECRETS = {"POSTGRES_PASSWORD": PG_PASSWORD, "REDIS_PASSWORD": "redis-Facts-Secret-5a1c"}


@pytest.mark.parametrize("value, secrets, expected", [
    ("${POSTGRES_PASSWORD}", DB_SECRETS, PG_PASSWORD),
    ("postgres://prodg:${POSTGRES_PASSWORD}@postgres:5432/prodg", DB_SECRETS,
     f"postgres://prodg:{PG_PASSWORD}@postgres:5432/prodg"),
    ("${POSTGRES_PASSWORD}:${REDIS_PASSWORD}", DB_SECRETS, f"{PG_PASSWORD}:redis-Facts-Secret-5a1c"),
    ("pa$$word", DB_SECRETS, "pa$word"),
    ("$$", DB_SECRETS, "$"),
    ("$${POSTGRES_PASSWORD}", DB_SECRETS, "${POSTGRES_PASSWORD}"),  # escaped: a literal reference, not the secret
    ("$$${POSTGRES_PASSWORD}", DB_SECRETS, f"${PG_PASSWORD}"),
    ("${MISSING}", DB_SECRETS, ""),
    ("x-${MISSING}-y", {}, "x--y"),
    ("${POSTGRES_PASSWORD}", {"POSTGRES_PASSWORD": "a$$b"}, "a$$b"),  # a secret's own `$$` is not unescaped
    ("${POSTGRES_PASSWORD}", {"POSTGRES_PASSWORD": "${REDIS_PASSWORD}", "REDIS_PASSWORD": "no"},
     "${REDIS_PASSWORD}"),  # a secret's value is not expanded again
    ("$HOME and ${lower_case}x", {"lower_case": "v"}, "$HOME and vx"),
    ("plain", {}, "plain"),
    ("", {}, ""),
], ids=["whole value", "embedded", "two refs", "$$ in text", "$$ alone", "escaped ref", "$ then ref", "missing",
        "missing embedded", "secret with $$", "secret not re-expanded", "bare $VAR kept", "plain", "empty"])
def test_resolve_env(value: str, secrets: dict[str, str], expected: str) -> None:
    spec = replace(BASE, environment=(("V", value),))
    assert resolve_env(spec, secrets) == {"V": expected}


def test_resolve_env_whole_environment() -> None:
    assert resolve_env(BASE, SECRETS) == {"POSTGRES_DB": "prodg", "POSTGRES_INITDB_ARGS": "--data-checksums",
                                          "POSTGRES_PASSWORD": PG_PASSWORD, "POSTGRES_USER": "prodg"}
    assert resolve_env(replace(BASE, environment=()), SECRETS) == {}


# -- desired_facts -----------------------------------------------------------------------------------------------------


def test_desired_facts_of_the_base_spec() -> None:
    facts = desired_facts(BASE, SECRETS, POSTGRES_16.id)
    assert facts == Facts(
        image_id=POSTGRES_16.id,
        command=None,
        env=(("POSTGRES_DB", sha256_hex("prodg")), ("POSTGRES_INITDB_ARGS", sha256_hex("--data-checksums")),
             ("POSTGRES_PASSWORD", sha256_hex(PG_PASSWORD)), ("POSTGRES_USER", sha256_hex("prodg"))),
        ports=("127.0.0.1:5432->5432/tcp",),
        mounts=("bind:/opt/prodg/deployed/postgres/init.sql:/docker-entrypoint-initdb.d/init.sql:ro",
                "volume:prodg_pgdata:/var/lib/postgresql/data:rw"),
        networks=("prodg_backend",),
        restart="unless-stopped",
        user="",
        labels=(("backup.role", "pg_dumpall"),),
        healthcheck=("CMD-SHELL", "pg_isready -U prodg -d prodg"),
        running=True,
    )
    assert PG_PASSWORD not in repr(facts)


# -- observed_facts: one field of inspect data at a time ---------------------------------------------------------------


def _observed(edit: dict[str, Any] | None = None, declared: set[str] | None = None,
              image_env: dict[str, str] | None = None) -> Facts:
    attrs = container_attrs(BASE, SECRETS, POSTGRES_16)
    for path, value in (edit or {}).items():
        node = attrs
        *parents, last = path.split("|")
        for key in parents:
            node = node[key]
        node[last] = value
    return observed_facts(attrs, {k for k, _ in BASE.environment} if declared is None else declared,
                          dict(POSTGRES_16.env) if image_env is None else image_env)


@pytest.mark.parametrize("policy, expected", [
    ({"Name": "unless-stopped", "MaximumRetryCount": 0}, "unless-stopped"),
    ({"Name": "always", "MaximumRetryCount": 0}, "always"),
    ({"Name": "no", "MaximumRetryCount": 0}, "no"),
    ({"Name": "", "MaximumRetryCount": 0}, "no"),
    ({}, "no"),
    (None, "no"),
    ({"Name": "on-failure", "MaximumRetryCount": 0}, "on-failure"),
    ({"Name": "on-failure", "MaximumRetryCount": 5}, "on-failure:5"),
])
def test_observed_restart(policy: Any, expected: str) -> None:
    assert _observed({"HostConfig|RestartPolicy": policy}).restart == expected


@pytest.mark.parametrize("bindings, expected", [
    ({"5432/tcp": [{"HostIp": "127.0.0.1", "HostPort": "5432"}]}, ("127.0.0.1:5432->5432/tcp",)),
    ({"5432/tcp": [{"HostIp": "", "HostPort": "5432"}]}, ("0.0.0.0:5432->5432/tcp",)),
    ({"5432/tcp": [{"HostIp": "::", "HostPort": "5432"}]}, ("[::]:5432->5432/tcp",)),
    ({"3478/udp": [{"HostIp": "0.0.0.0", "HostPort": "3478"}]}, ("0.0.0.0:3478->3478/udp",)),
    ({"5432/tcp": [{"HostIp": "127.0.0.1", "HostPort": "5432"}, {"HostIp": "::1", "HostPort": "5432"}]},
     ("127.0.0.1:5432->5432/tcp", "[::1]:5432->5432/tcp")),
    ({"5432/tcp": None}, ()),  # exposed, not published
    ({}, ()),
    (None, ()),
    # Engine-picked (127.0.0.1::5432): the requested binding, whatever port the Engine chose — as the spec says it
    ({"5432/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]}, ("127.0.0.1:0->5432/tcp",)),
    ({"5432/tcp": [{"HostIp": "127.0.0.1", "HostPort": "0"}]}, ("127.0.0.1:0->5432/tcp",)),
    ({"5432/tcp": [{"HostIp": "127.0.0.1"}]}, ("127.0.0.1:0->5432/tcp",)),
], ids=["loopback", "empty host ip", "ipv6 any", "udp", "two bindings", "exposed only", "none", "null",
        "engine-picked ''", "engine-picked '0'", "engine-picked, no HostPort key"])
def test_observed_ports(bindings: Any, expected: tuple[str, ...]) -> None:
    assert _observed({"HostConfig|PortBindings": bindings}).ports == expected


ANON = _hex("anonymous")


@pytest.mark.parametrize("mounts, expected", [
    ([{"Type": "bind", "Source": "/srv/a", "Destination": "/a", "Mode": "ro", "RW": False}], ("bind:/srv/a:/a:ro",)),
    ([{"Type": "bind", "Source": "/srv/a", "Destination": "/a", "Mode": "", "RW": True}], ("bind:/srv/a:/a:rw",)),
    ([{"Type": "volume", "Name": "prodg_pgdata", "Source": "/var/lib/docker/volumes/prodg_pgdata/_data",
       "Destination": "/var/lib/postgresql/data", "Driver": "local", "Mode": "z", "RW": True}],
     ("volume:prodg_pgdata:/var/lib/postgresql/data:rw",)),
    ([{"Type": "volume", "Name": ANON, "Source": f"/var/lib/docker/volumes/{ANON}/_data", "Destination": "/data",
       "Driver": "local", "Mode": "", "RW": True}], ()),
    ([{"Type": "tmpfs", "Source": "", "Destination": "/run", "Mode": "", "RW": True}], ()),
    ([], ()),
    (None, ()),
], ids=["bind ro", "bind rw", "named volume", "anonymous volume", "tmpfs", "none", "null"])
def test_observed_mounts(mounts: Any, expected: tuple[str, ...]) -> None:
    assert _observed({"Mounts": mounts}).mounts == expected


@pytest.mark.parametrize("labels, expected", [
    ({"backup.role": "pg_dumpall", "prodg.project": "prodg", "prodg.spec-hash": "abc", "prodg.commit": "def",
      "com.docker.compose.project": "prodg", "org.opencontainers.image.version": "16.4"},
     (("backup.role", "pg_dumpall"),)),
    ({}, ()),
    (None, ()),
])
def test_observed_labels(labels: Any, expected: tuple) -> None:
    assert _observed({"Config|Labels": labels}).labels == expected


@pytest.mark.parametrize("state, running", [
    ({"Status": "running", "Running": True, "Restarting": False}, True),
    ({"Status": "exited", "Running": False, "Restarting": False, "ExitCode": 137}, False),
    ({"Status": "restarting", "Running": True, "Restarting": True, "ExitCode": 1}, False),
    ({"Status": "created", "Running": False, "Restarting": False}, False),
    ({}, False),
])
def test_observed_running(state: dict, running: bool) -> None:
    assert _observed({"State": state}).running is running


def test_observed_env_leaves_out_image_defaults() -> None:
    env = dict(_observed().env)
    assert sorted(env) == ["POSTGRES_DB", "POSTGRES_INITDB_ARGS", "POSTGRES_PASSWORD", "POSTGRES_USER"]
    assert env["POSTGRES_PASSWORD"] == sha256_hex(PG_PASSWORD)


@pytest.mark.parametrize("extra, declared, counted", [
    ("PGDATA=/var/lib/postgresql/data", set(), False),  # the image's own value: not ours
    ("PGDATA=/srv/pg", set(), True),  # overrides the image's value: someone set it
    ("PGDATA=/var/lib/postgresql/data", {"PGDATA"}, True),  # declared: ours even when equal to the default
    ("DEBUG=1", set(), True),  # neither declared nor the image's
    ("OPTS=a=b=c", set(), True),
], ids=["image default", "image key overridden", "declared default", "undeclared extra", "value with ="])
def test_observed_env_key(extra: str, declared: set[str], counted: bool) -> None:
    attrs = container_attrs(BASE, SECRETS, POSTGRES_16)
    key, _, value = extra.partition("=")
    attrs["Config"]["Env"] = [e for e in attrs["Config"]["Env"] if not e.startswith(key + "=")] + [extra]
    env = dict(observed_facts(attrs, declared, dict(POSTGRES_16.env)).env)
    assert (key in env) is counted
    if counted:
        assert env[key] == sha256_hex(value)


def test_observed_defaults_from_sparse_inspect_data() -> None:
    """A container reported with most fields missing or null still reduces to facts."""
    facts = observed_facts({"Image": "sha256:" + _hex("x"), "Config": {"Env": None, "Cmd": None, "Labels": None,
                                                                        "Healthcheck": None, "User": ""},
                            "HostConfig": {}, "NetworkSettings": {"Networks": None}, "Mounts": None,
                            "State": {"Running": True}}, set(), {})
    assert facts == Facts("sha256:" + _hex("x"), (), (), (), (), (), "no", "", (), (), True)


# -- the round trip: a container made from a spec has that spec's facts ------------------------------------------------

ROUND_TRIP = {
    "base": (BASE, POSTGRES_16),
    "declares PGDATA": (DECLARES_PGDATA, POSTGRES_16),
    "command": (WITH_COMMAND, POSTGRES_16),
    "on-failure:3": (ON_FAILURE_3, POSTGRES_16),
    "restart no": (RESTART_NO, POSTGRES_16),
    "ipv6": (ON_IPV6_TOO, POSTGRES_16),
    "engine-picked port": (ENGINE_PICKED, POSTGRES_16),
    "two networks": (TWO_NETWORKS, POSTGRES_16),
    "user": (AS_USER, POSTGRES_16),
    "redis": (REDIS_SPEC, REDIS_7),
}


@pytest.mark.parametrize("spec, image", ROUND_TRIP.values(), ids=ROUND_TRIP.keys())
def test_round_trip(spec, image) -> None:
    secrets = {**SECRETS, "REDIS_PASSWORD": "redis-Facts-Secret-5a1c"}
    want = desired_facts(spec, secrets, image.id)
    got = observed_facts(container_attrs(spec, secrets, image), {k for k, _ in spec.environment}, dict(image.env))
    assert got.diff(want) == {}
    assert got == replace(want, command=want.command if want.command is not None else tuple(image.cmd))


def test_image_cmd_is_observed_not_a_difference() -> None:
    want = desired_facts(NO_COMMAND, SECRETS, POSTGRES_16.id)
    got = observed_facts(container_attrs(NO_COMMAND, SECRETS, POSTGRES_16), {k for k, _ in NO_COMMAND.environment},
                         dict(POSTGRES_16.env))
    assert (want.command, got.command) == (None, ("postgres",))
    assert got.diff(want) == {}


def test_image_healthcheck_and_user_are_observed_not_a_difference() -> None:
    want = desired_facts(NO_HEALTHCHECK, SECRETS, POSTGRES_STANDIN.id)
    got = observed_facts(container_attrs(NO_HEALTHCHECK, SECRETS, POSTGRES_STANDIN),
                         {k for k, _ in NO_HEALTHCHECK.environment}, dict(POSTGRES_STANDIN.env))
    assert (want.healthcheck, got.healthcheck) == ((), ("CMD-SHELL", "pg_isready -h 127.0.0.1"))
    assert (want.user, got.user) == ("", "postgres")
    assert got.diff(want) == {}


def test_observed_networks() -> None:
    attrs = container_attrs(TWO_NETWORKS, SECRETS, POSTGRES_16)
    attrs["NetworkSettings"]["Networks"]["bridge"] = BRIDGE
    assert observed_facts(attrs, set(), dict(POSTGRES_16.env)).networks == ("bridge", "prodg_backend",
                                                                             "prodg_monitoring")


# -- where a published port answers: the Engine-picked one read back from the running container ----------------------

PICKED_ATTRS = container_attrs(ENGINE_PICKED, SECRETS, POSTGRES_16)


@pytest.mark.parametrize("ports, container_port, protocol, host_ip, expected", [
    ({"5432/tcp": [{"HostIp": "127.0.0.1", "HostPort": "49153"}]}, 5432, "tcp", "", 49153),
    ({"5432/tcp": [{"HostIp": "127.0.0.1", "HostPort": "49153"}]}, 5432, "tcp", "127.0.0.1", 49153),
    ({"5432/tcp": [{"HostIp": "127.0.0.1", "HostPort": "49153"}, {"HostIp": "::1", "HostPort": "49154"}]},
     5432, "tcp", "::1", 49154),
    ({"5432/tcp": [{"HostIp": "0.0.0.0", "HostPort": "49153"}, {"HostIp": "::", "HostPort": "49153"}]},
     5432, "tcp", "::", 49153),  # a wildcard publication answers on both families
    ({"5432/tcp": [{"HostIp": "127.0.0.1", "HostPort": "49153"}]}, 5432, "udp", "", None),
    ({"5432/tcp": [{"HostIp": "127.0.0.1", "HostPort": "49153"}]}, 6379, "tcp", "", None),
    ({"5432/tcp": None}, 5432, "tcp", "", None),  # exposed, not published
    ({"5432/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]}, 5432, "tcp", "", None),
    ({}, 5432, "tcp", "", None),  # not running: the Engine shows no publications
    (None, 5432, "tcp", "", None),
], ids=["any ip", "its ip", "the ipv6 binding", "wildcard families", "other protocol", "other port", "exposed only",
        "no port yet", "not running", "null"])
def test_published_port(ports: Any, container_port: int, protocol: str, host_ip: str, expected) -> None:
    assert published_port({"NetworkSettings": {"Ports": ports}}, container_port, protocol, host_ip) == expected


class _InspectOnly:
    """The one Engine call `endpoint` makes (`client.api.inspect_container`), answering fixed inspect data."""

    def __init__(self, attrs):
        self.api, self.attrs, self.calls = self, attrs, 0

    def inspect_container(self, name):
        self.calls += 1
        if self.attrs is None:
            raise LookupError(name)
        return self.attrs


def _stopped(attrs: dict) -> dict:
    return {**attrs, "NetworkSettings": {**attrs["NetworkSettings"], "Ports": {},
                                         "Networks": {n: {**v, "IPAddress": ""}
                                                      for n, v in attrs["NetworkSettings"]["Networks"].items()}}}


@pytest.mark.parametrize("spec, attrs, probe_network, expected, inspected", [
    (BASE, container_attrs(BASE, SECRETS, POSTGRES_16), "", ("127.0.0.1", 5432), 0),  # fixed: the spec says it
    (ENGINE_PICKED, PICKED_ATTRS, "", ("127.0.0.1", int(PICKED_PORT)), 1),  # picked: read back from the Engine
    (replace(ENGINE_PICKED, ports=(Port("0.0.0.0", 0, 5432),)),
     container_attrs(replace(ENGINE_PICKED, ports=(Port("0.0.0.0", 0, 5432),)), SECRETS, POSTGRES_16), "",
     ("127.0.0.1", int(PICKED_PORT)), 1),  # a wildcard publication is reached on loopback
    (ENGINE_PICKED, _stopped(PICKED_ATTRS), "", None, 1),  # not running: no port, no address
    (ENGINE_PICKED, None, "", None, 1),  # no such container
    (ENGINE_PICKED, PICKED_ATTRS, "prodg_backend", ("172.20.0.5", 5432), 1),  # prodg in a container: the network
], ids=["fixed port", "engine-picked", "engine-picked wildcard", "engine-picked, stopped", "no container",
        "probe network"])
def test_endpoint(spec, attrs, probe_network: str, expected, inspected: int) -> None:
    client = _InspectOnly(attrs)
    assert endpoint(client, probe_network, spec, 5432) == expected
    assert client.calls == inspected


# -- Facts.diff --------------------------------------------------------------------------------------------------------

LIVE = Facts(
    image_id="sha256:" + _hex("postgres:16.4-alpine"),
    command=("postgres",),
    env=(("POSTGRES_PASSWORD", sha256_hex("old")), ("POSTGRES_USER", sha256_hex("prodg"))),
    ports=("127.0.0.1:5432->5432/tcp",),
    mounts=("volume:prodg_pgdata:/var/lib/postgresql/data:rw",),
    networks=("prodg_backend",),
    restart="unless-stopped",
    user="postgres",
    labels=(("backup.role", "pg_dumpall"),),
    healthcheck=("CMD", "pg_isready"),
)


@pytest.mark.parametrize("desired, expected", [
    (LIVE, {}),
    (replace(LIVE, command=None), {}),
    (replace(LIVE, command=()), {}),
    (replace(LIVE, healthcheck=()), {}),
    (replace(LIVE, user=""), {}),
    (replace(LIVE, command=("postgres", "-c", "fsync=off")), {"command": ("postgres", "postgres, -c, fsync=off")}),
    (replace(LIVE, healthcheck=("CMD-SHELL", "pg_isready -U prodg")),
     {"healthcheck": ("CMD, pg_isready", "CMD-SHELL, pg_isready -U prodg")}),
    (replace(LIVE, user="70:70"), {"user": ("postgres", "70:70")}),
    (replace(LIVE, env=(("POSTGRES_PASSWORD", sha256_hex("new")), ("POSTGRES_USER", sha256_hex("prodg")))),
     {"env": ("POSTGRES_PASSWORD (other value)", "POSTGRES_PASSWORD (set)")}),
    (replace(LIVE, env=(("POSTGRES_DB", sha256_hex("prodg")), ("POSTGRES_PASSWORD", sha256_hex("old")))),
     {"env": ("POSTGRES_DB (absent), POSTGRES_USER (set)", "POSTGRES_DB (set), POSTGRES_USER (absent)")}),
    (replace(LIVE, ports=()), {"ports": ("127.0.0.1:5432->5432/tcp", "(none)")}),
    (replace(LIVE, networks=("prodg_backend", "prodg_monitoring")),
     {"networks": ("prodg_backend", "prodg_backend, prodg_monitoring")}),
    (replace(LIVE, labels=()), {"labels": ("backup.role pg_dumpall", "(none)")}),
    (replace(LIVE, restart="always", image_id="sha256:" + _hex("new")),
     {"image_id": (LIVE.image_id, "sha256:" + _hex("new")), "restart": ("unless-stopped", "always")}),
], ids=["same", "command None", "command empty", "healthcheck empty", "user empty", "command", "healthcheck",
        "user", "env value", "env keys", "ports", "networks", "labels", "image and restart"])
def test_diff(desired: Facts, expected: dict) -> None:
    assert LIVE.diff(desired) == expected


def test_diff_running() -> None:
    assert replace(LIVE, running=False).diff(LIVE) == {"running": ("False", "True")}


def test_diff_never_shows_env_hashes() -> None:
    desired = replace(LIVE, env=(("POSTGRES_PASSWORD", sha256_hex("new")),))
    shown = repr(LIVE.diff(desired))
    assert sha256_hex("new") not in shown and sha256_hex("old") not in shown

