"""Facts: what a container looks like, as comparable data — read from `docker inspect`, or derived from a spec.

Both sides reduce to the same shape, so a plan is a field-by-field comparison. Environment values enter only as
hashes: facts are safe to log and to put in metadata.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

from ..spec.model import SECRET_REF, ServiceSpec, sha256_hex

LABEL_PROJECT = "prodg.project"
LABEL_SERVICE = "prodg.service"
LABEL_SPEC_HASH = "prodg.spec-hash"
LABEL_COMMIT = "prodg.commit"


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

    def diff(self, other: "Facts") -> dict[str, tuple[str, str]]:
        """Fields that differ: {field: (self's value, other's value)} as display strings (env keys only)."""
        out: dict[str, tuple[str, str]] = {}
        for name in self.__dataclass_fields__:
            mine, theirs = getattr(self, name), getattr(other, name)
            if name in ("command", "healthcheck", "user") and not theirs:
                continue  # not declared: the image's default applies, whatever it is
            if mine != theirs:
                if name == "env":
                    a, b = dict(mine), dict(theirs)
                    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
                    out["env"] = (", ".join(keys), "values differ")
                else:
                    out[name] = (_show(mine), _show(theirs))
        return out


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ", ".join(" ".join(v) if isinstance(v, tuple) else str(v) for v in value) or "(none)"
    return str(value)


def resolve_env(spec: ServiceSpec, secrets: Mapping[str, str]) -> dict[str, str]:
    """The container's environment with `${SECRET}` references replaced by their values (`$$` → `$`)."""
    out = {}
    for key, value in spec.environment:
        out[key] = SECRET_REF.sub(lambda m: secrets.get(m.group(1), ""), value.replace("$$", "\0")).replace("\0", "$")
    return out


ENGINE_LABEL_PREFIXES = ("prodg.", "com.docker.", "org.opencontainers.")


def desired_facts(spec: ServiceSpec, secrets: Mapping[str, str], image_id: str,
                  file_env: Mapping[str, str] | None = None) -> Facts:
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
            ports.append(f"{shown}:{b.get('HostPort')}->{port}/{proto or 'tcp'}")
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
    )


def _anonymous(mount: Mapping[str, Any]) -> bool:
    # Anonymous volumes (an image's VOLUME) have 64-hex names; they are the image's business, not drift.
    name = mount.get("Name") or ""
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)
