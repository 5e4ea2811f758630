"""Load and validate a config tree (`prodg.yaml` + the Compose file it names) into a DesiredState.

Pure: reads only through the ConfigTree it is given and the environment mapping it is passed. Every problem is
collected as a located SpecError; `load_desired_state` raises ConfigInvalid with all of them, never a traceback.
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
import shlex
from typing import Any, Callable, Mapping

from .errors import ConfigInvalid, SpecError
from .model import (
    LAYERS,
    TRUST_TIERS,
    BackupTarget,
    Build,
    DesiredState,
    DnsRecord,
    Healthcheck,
    Mount,
    NetworkSpec,
    Port,
    ServiceSpec,
    Settings,
    sha256_hex,
)
from .tree import ConfigTree
from .yamldoc import Doc, Path, load_yaml

PRODG_FILE = "prodg.yaml"
DEFAULT_COMPOSE = "compose/docker-compose.yml"

SERVICE_KEYS = {
    "image", "build", "command", "environment", "env_file", "ports", "volumes", "networks", "healthcheck",
    "restart", "labels", "user", "depends_on", "container_name", "x-prodg",
}
XPRODG_KEYS = {"layer", "public", "trust_tier", "after", "backup", "internal_ports"}
COMPOSE_TOP_KEYS = {"name", "services", "networks", "volumes"}
DOCKER_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock")
SECRETISH_KEY = re.compile(r"(PASSWORD|PASSWD|SECRET|TOKEN|PRIVATE_KEY|API_KEY|ENCRYPTION_KEY)", re.I)
VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")
DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?(?:(\d+(?:\.\d+)?)s)?(?:(\d+)ms)?$")
RESTART = re.compile(r"^(no|always|unless-stopped|on-failure(:\d+)?)$")


class _Req:
    def __init__(self, schema: Any):
        self.schema = schema


class _Map:
    """A mapping with free-form keys whose values follow `schema`."""

    def __init__(self, schema: Any):
        self.schema = schema


class _OneOf:
    def __init__(self, *choices: str):
        self.choices = choices


_TYPE_WORDS = {str: "a string", int: "an integer", bool: "true or false", float: "a number", dict: "a mapping",
               list: "a list"}

# config/prodg.yaml: every field it may carry. Unknown keys are errors, never silently ignored.
PRODG_SCHEMA = {
    "compose_file": str,
    "variables": _Map((str, int, float, bool)),
    "host": _Req({
        "hostname": _Req(str), "public_ip": str, "tailscale_ip": str, "os": _Req(str), "kernel": str,
        "min_free_disk_gb": _Req((int, float)), "public_ports": _Req([str]), "bind_roots": [str],
        "ufw": {"active": bool, "allow": [str]}, "ssh_keys": [str],
    }),
    "dns": {
        "provider": _OneOf("cloudflare"), "zone": str, "api_base_url": str, "api_token_secret": str,
        "require_dns_only": bool,
        "records": [{"name": _Req(str), "type": _Req(_OneOf("A", "AAAA", "CNAME")), "content": _Req(str),
                     "proxied": bool}],
    },
    "tls": {"acme_ca_url": str, "email": str, "expiry_warning_days": int, "storage": str},
    "secrets": _Req({
        "source": _Req(_OneOf("env_file", "infisical")), "env_file": str,
        "infisical": {"api_base_url": str, "project_id": str, "environment": str, "token_env": str},
        "required": _Req(_Map({"used_by": [str], "purpose": str})),
    }),
    "backups": {
        "bucket": _Req(str), "endpoint_url": str, "region": str, "access_key_id_env": str,
        "secret_access_key_env": str, "schedule": str, "timezone": str, "start_date": (str, object),
        "compression": _OneOf("zstd", "gzip"), "freshness_hours": (int, float),
        "targets": _Req(_Map({"method": _Req(_OneOf("pg_dumpall", "s3_mirror", "config_archive")),
                              "service": str, "prefix": _Req(str), "retention_days": _Req(int)})),
    },
    "notifications": {
        "telegram": {"api_base_url": str, "bot_token_secret": str, "chat_id": (str, int),
                     "on": [_OneOf("deploy_failure", "deploy_success", "backup_success", "backup_failure")],
                     "ui_base_url": str},
    },
    "deploy": {
        "branch": str, "prune": bool, "self_heal": bool, "health_timeout_s": (int, float),
        "drift_schedule": str, "stop_timeout_s": int,
    },
    "images": {"local": _Map(str), "unavailable_offline": [str]},
    "integrations": {"headscale": {"api_base_url": str, "api_key_secret": str}},
}


class _Ctx:
    def __init__(self, tree: ConfigTree, env: Mapping[str, str]):
        self.tree, self.env = tree, env
        self.errors: list[SpecError] = []
        self.variables: dict[str, str] = {}
        self.secrets: set[str] = set()

    def file(self, rel: str) -> str:
        return posixpath.join(self.tree.label, rel)

    def load(self, rel: str) -> Doc | None:
        raw = self.tree.read(rel)
        if raw is None:
            self.errors.append(SpecError(self.file(rel), 1, "(document)", "file not found"))
            return None
        doc, errors = load_yaml(self.file(rel), raw)
        self.errors.extend(errors)
        if doc is not None and not isinstance(doc.data, dict):
            self.errors.append(doc.error((), f"must be a mapping, got {_kind(doc.data)}"))
            return None
        return doc

    # -- interpolation -------------------------------------------------------------------------------------------
    def interpolate(self, doc: Doc, path: Path, value: str, allow_secrets: bool = False) -> str:
        """Compose-style `${VAR}` / `${VAR:-default}` / `$$`. Declared variables are substituted; declared secrets
        stay as `${NAME}` references (resolved only when a container is created) and are allowed only where
        `allow_secrets`; anything else is an error."""

        def sub(m: re.Match) -> str:
            if m.group(0) == "$$":
                return "$$"
            name = m.group(1) or m.group(3)
            if name in self.secrets:
                if not allow_secrets:
                    self.errors.append(doc.error(path, f"secret ${{{name}}} may only be used in `environment`"))
                return "${" + name + "}"
            if name in self.variables:
                return self.variables[name]
            if m.group(2) is not None:
                return m.group(2)
            self.errors.append(doc.error(path, f"references ${{{name}}}, which is neither a variable of "
                                               f"prodg.yaml nor a declared secret"))
            return ""

        if "$" not in value:
            return value
        out = VAR.sub(sub, value)
        # In `environment` the `$$` escape stays for the engine, which resolves secret references and `$$` in one
        # pass when it creates the container; elsewhere it is unescaped here.
        return out if allow_secrets else out.replace("$$", "$")


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number", type(None): "nothing"}.get(type(value), type(value).__name__)


def _check(ctx: _Ctx, doc: Doc, path: Path, value: Any, schema: Any) -> None:
    """Structural check of `value` against PRODG_SCHEMA-style `schema`."""
    if isinstance(schema, _Req):
        schema = schema.schema
    if isinstance(schema, _OneOf):
        if value not in schema.choices:
            ctx.errors.append(doc.error(path, f"must be one of {', '.join(schema.choices)}, got {value!r}"))
        return
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            ctx.errors.append(doc.error(path, f"must be a mapping, got {_kind(value)}"))
            return
        for key in value:
            if key not in schema:
                ctx.errors.append(doc.error(path + (key,), f"unknown key (allowed: {', '.join(sorted(schema))})"))
        for key, sub in schema.items():
            if key in value:
                _check(ctx, doc, path + (key,), value[key], sub)
            elif isinstance(sub, _Req):
                ctx.errors.append(doc.error(path, f"missing required key '{key}'"))
        return
    if isinstance(schema, _Map):
        if not isinstance(value, dict):
            ctx.errors.append(doc.error(path, f"must be a mapping, got {_kind(value)}"))
            return
        for key, sub in value.items():
            _check(ctx, doc, path + (key,), sub, schema.schema)
        return
    if isinstance(schema, list):
        if not isinstance(value, list):
            ctx.errors.append(doc.error(path, f"must be a list, got {_kind(value)}"))
            return
        for i, item in enumerate(value):
            _check(ctx, doc, path + (i,), item, schema[0])
        return
    types = schema if isinstance(schema, tuple) else (schema,)
    if object in types:
        return
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if not ok:
        words = " or ".join(_TYPE_WORDS.get(t, t.__name__) for t in types)
        ctx.errors.append(doc.error(path, f"must be {words}, got {_kind(value)}"))


def _interpolate_all(ctx: _Ctx, doc: Doc, path: Path, value: Any, allow_secrets: Callable[[Path], bool]) -> Any:
    if isinstance(value, str):
        return ctx.interpolate(doc, path, value, allow_secrets(path))
    if isinstance(value, dict):
        return {k: _interpolate_all(ctx, doc, path + (k,), v, allow_secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate_all(ctx, doc, path + (i,), v, allow_secrets) for i, v in enumerate(value)]
    return value


def _duration(ctx: _Ctx, doc: Doc, path: Path, value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    m = DURATION.match(str(value).strip()) if isinstance(value, str) and value.strip() else None
    if not m:
        ctx.errors.append(doc.error(path, f"must be a duration like 10s, 1m30s or 500ms, got {value!r}"))
        return 0.0
    h, mi, s, ms = m.groups()
    return float(h or 0) * 3600 + float(mi or 0) * 60 + float(s or 0) + float(ms or 0) / 1000


def _str_list(ctx: _Ctx, doc: Doc, path: Path, value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) and not isinstance(v, bool)
                                              for v in value):
        ctx.errors.append(doc.error(path, f"must be a list of strings, got {_kind(value)}"))
        return []
    return [str(v) for v in value]


def _kv(ctx: _Ctx, doc: Doc, path: Path, value: Any) -> list[tuple[str, str, Path]]:
    """Compose mapping-or-list form (`KEY: value` or `- KEY=value`) → [(key, value, path)]."""
    out: list[tuple[str, str, Path]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, (dict, list)):
                ctx.errors.append(doc.error(path + (key,), f"must be a string, got {_kind(item)}"))
                continue
            text = "" if item is None else ("true" if item is True else "false" if item is False else str(item))
            out.append((str(key), text, path + (key,)))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if not isinstance(item, str) or "=" not in item:
                ctx.errors.append(doc.error(path + (i,), f"must be KEY=value, got {item!r}"))
                continue
            key, _, text = item.partition("=")
            out.append((key, text, path + (i,)))
    else:
        ctx.errors.append(doc.error(path, f"must be a mapping or a list of KEY=value, got {_kind(value)}"))
    return out


class _ComposeReader:
    def __init__(self, ctx: _Ctx, doc: Doc, compose_rel: str, host_root: str, bind_roots: list[str]):
        self.ctx, self.doc = ctx, doc
        self.compose_dir = posixpath.dirname(compose_rel)
        self.host_root = host_root.rstrip("/") or "/"
        self.bind_roots = bind_roots

    def err(self, path: Path, message: str) -> None:
        self.ctx.errors.append(self.doc.error(path, message))

    def text(self, path: Path, value: Any, allow_secrets: bool = False) -> str | None:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            self.err(path, f"must be a string, got {_kind(value)}")
            return None
        return self.ctx.interpolate(self.doc, path, str(value), allow_secrets)

    def config_rel(self, path: Path, raw: str) -> str | None:
        """A path in the Compose file relative to its folder → relative to the config root, never escaping it."""
        rel = posixpath.normpath(posixpath.join(self.compose_dir, raw))
        if raw.startswith("/") or rel == ".." or rel.startswith("../"):
            self.err(path, f"path {raw!r} leaves the config tree")
            return None
        return rel

    def ports(self, path: Path, value: Any) -> list[Port]:
        if not isinstance(value, list):
            self.err(path, f"must be a list, got {_kind(value)}")
            return []
        out = []
        for i, item in enumerate(value):
            p = path + (i,)
            if isinstance(item, dict):
                unknown = set(item) - {"target", "published", "host_ip", "protocol", "mode"}
                if unknown:
                    self.err(p, f"unknown key {sorted(unknown)[0]!r} (allowed: host_ip, mode, protocol, published, "
                                f"target)")
                host_ip = str(item.get("host_ip", "0.0.0.0"))
                published, target, proto = item.get("published"), item.get("target"), item.get("protocol", "tcp")
            elif isinstance(item, (str, int)) and not isinstance(item, bool):
                text = self.text(p, item) or ""
                body, _, proto = text.partition("/")
                proto = proto or "tcp"
                m = re.match(r"^(?:(\[[^\]]*\]|[^:]*):)?(?:([^:]*):)?([^:]+)$", body)
                if not m or m.group(2) is None and m.group(1) is None:
                    self.err(p, f"publish as [HOST_IP:]HOST_PORT:CONTAINER_PORT[/PROTOCOL], got {text!r}")
                    continue
                if m.group(2) is None:  # "HOST:CONTAINER"
                    host_ip, published, target = "0.0.0.0", m.group(1), m.group(3)
                else:
                    host_ip, published, target = m.group(1).strip("[]"), m.group(2), m.group(3)
            else:
                self.err(p, f"must be a string or a mapping, got {_kind(item)}")
                continue
            try:
                ipaddress.ip_address(host_ip)
            except ValueError:
                self.err(p, f"host_ip must be an IP address, got {host_ip!r}")
                continue
            if proto not in ("tcp", "udp"):
                self.err(p, f"protocol must be tcp or udp, got {proto!r}")
                continue
            nums = []
            for label, num in (("host port", published), ("container port", target)):
                try:
                    n = int(str(num))
                    if not 1 <= n <= 65535:
                        raise ValueError
                    nums.append(n)
                except ValueError:
                    self.err(p, f"{label} must be a number from 1 to 65535, got {num!r}")
            if len(nums) == 2:
                out.append(Port(host_ip, nums[0], nums[1], proto))
        return out

    def volumes(self, path: Path, value: Any, declared: dict[str, str], tier: str) -> list[Mount]:
        if not isinstance(value, list):
            self.err(path, f"must be a list, got {_kind(value)}")
            return []
        out = []
        for i, item in enumerate(value):
            p = path + (i,)
            if isinstance(item, dict):
                unknown = set(item) - {"type", "source", "target", "read_only"}
                if unknown:
                    self.err(p, f"unknown key {sorted(unknown)[0]!r} (allowed: read_only, source, target, type)")
                source, target = str(item.get("source", "")), str(item.get("target", ""))
                read_only = bool(item.get("read_only", False))
                source = self.ctx.interpolate(self.doc, p, source)
            else:
                text = self.text(p, item)
                if text is None:
                    continue
                parts = text.split(":")
                if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("ro", "rw", "z", "Z")):
                    self.err(p, f"write volumes as SOURCE:TARGET[:ro], got {text!r}")
                    continue
                source, target = parts[0], parts[1]
                read_only = len(parts) == 3 and parts[2] == "ro"
            if not target.startswith("/"):
                self.err(p, f"container path must be absolute, got {target!r}")
                continue
            if source.startswith((".", "/", "~")):
                mount = self.bind(p, source, target, read_only, tier)
                if mount:
                    out.append(mount)
            elif source in declared:
                out.append(Mount("volume", declared[source], target, read_only))
            else:
                self.err(p, f"named volume {source!r} is not declared under top-level `volumes`")
        return out

    def tree_digest(self, files: list[str]) -> str:
        return sha256_hex("".join(f + "\0" + sha256_hex(self.ctx.tree.read(f) or b"") for f in files))

    def bind(self, path: Path, source: str, target: str, read_only: bool, tier: str) -> Mount | None:
        if source.startswith("~"):
            self.err(path, f"bind source {source!r}: '~' is not expanded; write an absolute path")
            return None
        if source.startswith("/"):
            if any(part == ".." for part in source.split("/")):
                self.err(path, f"bind source {source!r} uses '..'")
                return None
            host = posixpath.normpath(source)
            if host.startswith("/proc/"):
                self.err(path, f"bind source {host!r}: only /proc itself may be mounted (/proc/<pid>/root reaches "
                               f"the host's whole filesystem)")
                return None
            if any(host == s or s.startswith(host.rstrip("/") + "/") for s in DOCKER_SOCKETS) and tier != "T1":
                self.err(path, f"mounts the Docker socket ({host}); only trust tier T1 services may")
                return None
            if not any(host == r or host.startswith(r.rstrip("/") + "/") for r in self.bind_roots):
                self.err(path, f"bind source {host!r} is outside the allowed roots "
                               f"({', '.join(self.bind_roots) or 'none'}; see host.bind_roots in prodg.yaml)")
                return None
            return Mount("bind", host, target, read_only)
        rel = self.config_rel(path, source)
        if rel is None:
            return None
        files = list(self.ctx.tree.files_under(rel))
        if not files:
            self.err(path, f"bind source {source!r} does not exist in the config tree ({rel})")
            return None
        digest = self.tree_digest(files)
        host = posixpath.join(self.host_root, rel)
        return Mount("bind", host, target, read_only, config_path=f"{rel}#{digest[:16]}")


def _service(r: _ComposeReader, name: str, body: Any, project: str, networks: dict[str, NetworkSpec],
             volumes: dict[str, str], services: set[str]) -> ServiceSpec | None:
    path: Path = ("services", name)
    if not isinstance(body, dict):
        r.err(path, f"must be a mapping, got {_kind(body)}")
        return None
    for key in body:
        if key not in SERVICE_KEYS:
            r.err(path + (key,), f"unknown Compose key (the engine implements: {', '.join(sorted(SERVICE_KEYS))})")
    x = body.get("x-prodg")
    layer, tier, public, after, internal = "", "T2", [], [], []
    if not isinstance(x, dict):
        r.err(path, "missing `x-prodg` with the service's `layer`")
    else:
        for key in x:
            if key not in XPRODG_KEYS:
                r.err(path + ("x-prodg", key), f"unknown key (allowed: {', '.join(sorted(XPRODG_KEYS))})")
        layer = x.get("layer", "")
        if "layer" not in x:
            r.err(path + ("x-prodg",), "missing `layer`")
        elif layer not in LAYERS:
            r.err(path + ("x-prodg", "layer"), f"must be one of {', '.join(LAYERS)}, got {layer!r}")
        tier = x.get("trust_tier", "T2")
        if tier not in TRUST_TIERS:
            r.err(path + ("x-prodg", "trust_tier"), f"must be one of {', '.join(TRUST_TIERS)}, got {tier!r}")
        if "public" in x:
            public = _str_list(r.ctx, r.doc, path + ("x-prodg", "public"), x["public"])
        if "after" in x:
            after = _str_list(r.ctx, r.doc, path + ("x-prodg", "after"), x["after"])
        if "internal_ports" in x:
            raw = x["internal_ports"]
            if not isinstance(raw, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in raw):
                r.err(path + ("x-prodg", "internal_ports"), "must be a list of port numbers")
            else:
                internal = raw

    image = r.text(path + ("image",), body["image"]) if "image" in body else None
    build = None
    if "build" in body:
        b, bp = body["build"], path + ("build",)
        if isinstance(b, str):
            b = {"context": b}
        if not isinstance(b, dict):
            r.err(bp, f"must be a path or a mapping, got {_kind(b)}")
        else:
            for key in set(b) - {"context", "dockerfile", "args"}:
                r.err(bp + (key,), "unknown key (allowed: args, context, dockerfile)")
            ctx_rel = r.config_rel(bp + ("context",), str(b.get("context", ".")))
            ctx_files = list(r.ctx.tree.files_under(ctx_rel)) if ctx_rel is not None else []
            if ctx_rel is not None and not ctx_files:
                r.err(bp + ("context",), f"build context {ctx_rel!r} does not exist in the config tree")
            args = _kv(r.ctx, r.doc, bp + ("args",), b["args"]) if "args" in b else []
            if ctx_rel is not None:
                build = Build(ctx_rel, str(b.get("dockerfile", "Dockerfile")),
                              tuple((k, r.ctx.interpolate(r.doc, p, v)) for k, v, p in args),
                              r.tree_digest(ctx_files))
    if not image and not build:
        r.err(path, "needs `image` or `build`")
    image = image or f"{project}/{name}"

    command = None
    if "command" in body:
        c, cp = body["command"], path + ("command",)
        if isinstance(c, str):
            text = r.text(cp, c)
            try:
                command = tuple(shlex.split(text or ""))
            except ValueError as exc:
                r.err(cp, f"cannot split command: {exc}")
        elif isinstance(c, list):
            command = tuple(x for i, v in enumerate(c) if (x := r.text(cp + (i,), v)) is not None)
        else:
            r.err(cp, f"must be a string or a list, got {_kind(c)}")

    environment = []
    if "environment" in body:
        for key, value, p in _kv(r.ctx, r.doc, path + ("environment",), body["environment"]):
            literal = value.strip() and not VAR.search(value.replace("$$", ""))
            if literal and (key in r.ctx.secrets or (SECRETISH_KEY.search(key) and not key.endswith("_FILE"))):
                r.err(p, f"looks like a secret written literally; reference it as ${{{key}}} and keep the value "
                         f"in the secrets source")
            environment.append((key, r.ctx.interpolate(r.doc, p, value, allow_secrets=True)))
    env_files = []
    if "env_file" in body:
        ef = body["env_file"]
        for i, item in enumerate([ef] if isinstance(ef, str) else ef if isinstance(ef, list) else [None]):
            p = path + ("env_file",) + ((i,) if isinstance(ef, list) else ())
            text = r.text(p, item) if item is not None else None
            if text is None:
                r.err(p, "must be a path or a list of paths") if item is None else None
                continue
            if not text.startswith("/"):
                r.err(p, "env_file must be an absolute host path (secret files never live in the config repo)")
                continue
            env_files.append(text)

    ports = r.ports(path + ("ports",), body["ports"]) if "ports" in body else []
    mounts = r.volumes(path + ("volumes",), body["volumes"], volumes, tier) if "volumes" in body else []

    nets: list[tuple[str, tuple[str, ...]]] = []
    if "networks" in body:
        n, npath = body["networks"], path + ("networks",)
        items = [(k, v) for k, v in n.items()] if isinstance(n, dict) else [(k, None) for k in n] \
            if isinstance(n, list) else None
        if items is None:
            r.err(npath, f"must be a list or a mapping, got {_kind(n)}")
            items = []
        for key, opts in items:
            if not isinstance(key, str) or key not in networks:
                r.err(npath, f"network {key!r} is not declared under top-level `networks`")
                continue
            aliases: list[str] = []
            if isinstance(opts, dict):
                for k in set(opts) - {"aliases"}:
                    r.err(npath + (key, k), "unknown key (allowed: aliases)")
                aliases = _str_list(r.ctx, r.doc, npath + (key, "aliases"), opts.get("aliases", []))
            elif opts is not None:
                r.err(npath + (key,), f"must be a mapping, got {_kind(opts)}")
            nets.append((networks[key].name, tuple(aliases)))
    elif len(networks) == 1:
        nets.append((next(iter(networks.values())).name, ()))
    else:
        r.err(path, "declare the service's `networks` (the Compose file has more than one network)")

    health = None
    if "healthcheck" in body:
        h, hp = body["healthcheck"], path + ("healthcheck",)
        if not isinstance(h, dict):
            r.err(hp, f"must be a mapping, got {_kind(h)}")
        else:
            for key in set(h) - {"test", "interval", "timeout", "retries", "start_period", "disable"}:
                r.err(hp + (key,), "unknown key (allowed: disable, interval, retries, start_period, test, timeout)")
            test = h.get("test")
            if isinstance(test, str):
                test_t = ("CMD-SHELL", r.text(hp + ("test",), test) or "")
            elif isinstance(test, list) and test and test[0] in ("CMD", "CMD-SHELL", "NONE"):
                test_t = tuple(r.text(hp + ("test", i), v) or "" for i, v in enumerate(test))
            else:
                r.err(hp + ("test",), "must be a string or a list starting with CMD, CMD-SHELL or NONE")
                test_t = ()
            retries = h.get("retries", 3)
            if not isinstance(retries, int) or isinstance(retries, bool) or retries < 1:
                r.err(hp + ("retries",), f"must be a positive integer, got {retries!r}")
                retries = 3
            if not h.get("disable") and test_t:
                health = Healthcheck(
                    test_t,
                    _duration(r.ctx, r.doc, hp + ("interval",), h.get("interval", "30s")),
                    _duration(r.ctx, r.doc, hp + ("timeout",), h.get("timeout", "30s")),
                    retries,
                    _duration(r.ctx, r.doc, hp + ("start_period",), h.get("start_period", "0s")),
                )

    restart = str(body.get("restart", "no"))
    if not RESTART.match(restart):
        r.err(path + ("restart",), f"must be no, always, unless-stopped or on-failure[:N], got {restart!r}")
    labels = []
    if "labels" in body:
        for key, value, p in _kv(r.ctx, r.doc, path + ("labels",), body["labels"]):
            if key.startswith("prodg."):
                r.err(p, "labels starting with 'prodg.' are set by the engine")
            labels.append((key, r.ctx.interpolate(r.doc, p, value)))
    user = None
    if "user" in body:
        user = r.text(path + ("user",), body["user"])

    depends: list[str] = []
    if "depends_on" in body:
        d, dp = body["depends_on"], path + ("depends_on",)
        if isinstance(d, dict):
            for key, opts in d.items():
                if isinstance(opts, dict):
                    for k in set(opts) - {"condition", "restart", "required"}:
                        r.err(dp + (key, k), "unknown key (allowed: condition, required, restart)")
            depends = [str(k) for k in d]
        else:
            depends = _str_list(r.ctx, r.doc, dp, d)
    for field, names in (("depends_on", depends), ("x-prodg", after)):
        for dep in names:
            if dep not in services:
                r.err(path + (field,), f"names service {dep!r}, which the Compose file does not declare")
            elif dep == name:
                r.err(path + (field,), "a service cannot depend on itself")

    container_name = r.text(path + ("container_name",), body["container_name"]) if "container_name" in body \
        else None
    return ServiceSpec(
        name=name,
        container_name=container_name or name,
        layer=layer if layer in LAYERS else "",
        image=image,
        build=build,
        command=command,
        environment=tuple(sorted(environment)),
        env_files=tuple(env_files),
        ports=tuple(ports),
        volumes=tuple(mounts),
        networks=tuple(nets),
        healthcheck=health,
        restart=restart,
        labels=tuple(sorted(labels)),
        user=user,
        depends_on=tuple(sorted(set(depends) & services - {name})),
        after=tuple(sorted(set(after) & services - {name})),
        public_domains=tuple(public),
        trust_tier=tier if tier in TRUST_TIERS else "T2",
        internal_ports=tuple(internal),
    )


def _cycles(r: _ComposeReader, specs: dict[str, ServiceSpec]) -> None:
    state: dict[str, int] = {}
    reported: set[frozenset[str]] = set()

    def visit(name: str, stack: list[str]) -> None:
        state[name] = 1
        stack.append(name)
        spec = specs[name]
        for dep in sorted(set(spec.depends_on) | set(spec.after)):
            if dep not in specs:
                continue
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep):] + [dep]
                if frozenset(cycle) not in reported:
                    reported.add(frozenset(cycle))
                    r.err(("services", dep), "dependency cycle: " + " -> ".join(cycle))
            elif dep not in state:
                visit(dep, stack)
        stack.pop()
        state[name] = 2

    for name in sorted(specs):
        if name not in state:
            visit(name, [])


def _port_conflicts(r: _ComposeReader, specs: dict[str, ServiceSpec]) -> None:
    seen: dict[tuple[int, str], list[tuple[str, str]]] = {}
    for name, spec in sorted(specs.items()):
        for i, port in enumerate(spec.ports):
            for other_ip, other in seen.get((port.host_port, port.protocol), []):
                wildcard = {"0.0.0.0", "::"}
                if port.host_ip == other_ip or port.host_ip in wildcard or other_ip in wildcard:
                    r.err(("services", name, "ports", i),
                          f"host port {port.host_port}/{port.protocol} on {port.host_ip} is already published by "
                          f"service {other!r}")
                    break
            seen.setdefault((port.host_port, port.protocol), []).append((port.host_ip, name))


def _map(value: Any) -> dict:
    """`value` when it is a mapping, else {} (its type error is already reported by the schema check)."""
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _settings(ctx: _Ctx, doc: Doc, data: dict, services: Mapping[str, ServiceSpec]) -> Settings:
    host, dns, backups, sec = (_map(data.get(k)) for k in ("host", "dns", "backups", "secrets"))
    records = tuple(DnsRecord(str(r.get("name")), str(r.get("type")), str(r.get("content")), r.get("proxied") is True)
                    for r in _list(dns.get("records")) if isinstance(r, dict))
    if dns.get("require_dns_only") is True:
        for i, rec in enumerate(records):
            if rec.proxied:
                ctx.errors.append(doc.error(("dns", "records", i, "proxied"),
                                            "must be false: Caddy needs direct reachability for ACME HTTP-01"))
    targets = []
    for name, t in sorted(_map(backups.get("targets")).items()):
        if not isinstance(t, dict):
            continue
        service = t.get("service")
        if not isinstance(service, (str, type(None))):
            continue  # reported by the schema check
        if t.get("method") in ("pg_dumpall", "s3_mirror") and not service:
            ctx.errors.append(doc.error(("backups", "targets", name), f"method {t.get('method')} needs `service`"))
        elif service and service not in services:
            ctx.errors.append(doc.error(("backups", "targets", name, "service"),
                                        f"names service {service!r}, which the Compose file does not declare"))
        prefix = str(t.get("prefix", ""))
        if not prefix.endswith("/") or prefix.startswith("/"):
            ctx.errors.append(doc.error(("backups", "targets", name, "prefix"),
                                        f"must be a relative prefix ending in '/', got {prefix!r}"))
        days = t.get("retention_days", 0)
        days = days if isinstance(days, int) and not isinstance(days, bool) else 0
        if days < 1 and "retention_days" in t:
            ctx.errors.append(doc.error(("backups", "targets", name, "retention_days"), "must be at least 1"))
        targets.append(BackupTarget(str(name), str(t.get("method")), prefix, days, service))
    for t in targets:
        if any(o.prefix != t.prefix and o.prefix.startswith(t.prefix) for o in targets):
            ctx.errors.append(doc.error(("backups", "targets", t.name, "prefix"),
                                        "overlaps another target's prefix; retention works per prefix"))
    public_ports = [str(p) for p in _list(host.get("public_ports"))]
    for i, port in enumerate(public_ports):
        if not re.match(r"^\d{1,5}/(tcp|udp)$", port):
            ctx.errors.append(doc.error(("host", "public_ports", i), f"must look like 443/tcp, got {port!r}"))
    required = _map(sec.get("required"))
    for key, decl in required.items():
        for i, svc_name in enumerate(_list(_map(decl).get("used_by"))):
            if isinstance(svc_name, str) and svc_name not in services:
                ctx.errors.append(doc.error(("secrets", "required", key, "used_by", i),
                                            f"names service {svc_name!r}, which the Compose file does not declare"))
    return Settings(
        host=host, dns=dns, tls=_map(data.get("tls")), secrets=sec, backups=backups,
        notifications=_map(data.get("notifications")), deploy=_map(data.get("deploy")),
        images=_map(data.get("images")), integrations=_map(data.get("integrations")),
        dns_records=records, backup_targets=tuple(targets), required_secrets=tuple(sorted(map(str, required))),
        public_ports=tuple(public_ports),
    )


def _load(tree: ConfigTree, env: Mapping[str, str], host_root: str | None) -> tuple[DesiredState | None, _Ctx]:
    ctx = _Ctx(tree, env)
    pdoc = ctx.load(PRODG_FILE)
    if pdoc is None:
        return None, ctx
    _check(ctx, pdoc, (), pdoc.data, PRODG_SCHEMA)
    raw_vars = pdoc.data.get("variables") if isinstance(pdoc.data.get("variables"), dict) else {}
    secrets_decl = (pdoc.data.get("secrets") or {}).get("required") if isinstance(pdoc.data.get("secrets"), dict) \
        else None
    ctx.secrets = set(secrets_decl) if isinstance(secrets_decl, dict) else set()
    for name, default in raw_vars.items():
        if name in ctx.secrets:
            ctx.errors.append(pdoc.error(("variables", name), "is also declared as a secret"))
        ctx.variables[name] = str(env.get(name, default))
    pdata = _interpolate_all(ctx, pdoc, (), {k: v for k, v in pdoc.data.items() if k != "variables"},
                             lambda p: False)
    compose_rel = pdata.get("compose_file", DEFAULT_COMPOSE)
    if not isinstance(compose_rel, str) or compose_rel.startswith("/") or any(p == ".." for p in compose_rel.split("/")):
        ctx.errors.append(pdoc.error(("compose_file",), "must be a path inside the config tree"))
        return None, ctx
    cdoc = ctx.load(compose_rel)
    if cdoc is None:
        return None, ctx
    data = cdoc.data
    for key in data:
        if key not in COMPOSE_TOP_KEYS and not str(key).startswith("x-"):
            ctx.errors.append(cdoc.error((key,), f"unknown top-level Compose key (allowed: "
                                                 f"{', '.join(sorted(COMPOSE_TOP_KEYS))}, x-*)"))
    project = ctx.interpolate(cdoc, ("name",), str(data.get("name", "prodg")))
    networks: dict[str, NetworkSpec] = {}
    raw_nets = data.get("networks", {}) or {}
    if not isinstance(raw_nets, dict):
        ctx.errors.append(cdoc.error(("networks",), f"must be a mapping, got {_kind(raw_nets)}"))
        raw_nets = {}
    for key, n in raw_nets.items():
        n = n or {}
        np_: Path = ("networks", key)
        if not isinstance(n, dict):
            ctx.errors.append(cdoc.error(np_, f"must be a mapping, got {_kind(n)}"))
            continue
        for k in set(n) - {"name", "driver", "ipam", "external"}:
            ctx.errors.append(cdoc.error(np_ + (k,), "unknown key (allowed: driver, external, ipam, name)"))
        subnet = None
        ipam = n.get("ipam")
        if ipam is not None:
            configs = ipam.get("config") if isinstance(ipam, dict) else None
            if not isinstance(configs, list) or not configs or not isinstance(configs[0], dict):
                ctx.errors.append(cdoc.error(np_ + ("ipam",), "must be {config: [{subnet: CIDR}]}"))
            else:
                subnet = ctx.interpolate(cdoc, np_ + ("ipam", "config", 0, "subnet"), str(configs[0].get("subnet", "")))
                try:
                    ipaddress.ip_network(subnet)
                except ValueError:
                    ctx.errors.append(cdoc.error(np_ + ("ipam", "config", 0, "subnet"),
                                                 f"must be a network in CIDR form, got {subnet!r}"))
                    subnet = None
        name = ctx.interpolate(cdoc, np_ + ("name",), str(n.get("name", f"{project}_{key}")))
        networks[str(key)] = NetworkSpec(str(key), name, str(n.get("driver", "bridge")), subnet,
                                         n.get("external") is True)
    volumes: dict[str, str] = {}
    raw_vols = data.get("volumes", {}) or {}
    if not isinstance(raw_vols, dict):
        ctx.errors.append(cdoc.error(("volumes",), f"must be a mapping, got {_kind(raw_vols)}"))
        raw_vols = {}
    for key, v in raw_vols.items():
        volumes[str(key)] = str((v or {}).get("name", f"{project}_{key}")) if isinstance(v, dict) or v is None \
            else f"{project}_{key}"
    raw_services = data.get("services")
    if not isinstance(raw_services, dict) or not raw_services:
        ctx.errors.append(cdoc.error(("services",), "must be a mapping of at least one service"))
        return None, ctx
    host = pdata.get("host") if isinstance(pdata.get("host"), dict) else {}
    roots = host.get("bind_roots", []) if isinstance(host.get("bind_roots"), list) else []
    tree_root = host_root or getattr(tree, "root", None) or "/opt/prodg/config"
    reader = _ComposeReader(ctx, cdoc, compose_rel, tree_root,
                            [posixpath.normpath(str(r)) for r in roots if str(r).startswith("/")])
    names = {str(k) for k in raw_services}
    specs: dict[str, ServiceSpec] = {}
    for name, body in raw_services.items():
        if not re.match(r"^[a-z0-9][a-z0-9_-]*$", str(name)):
            reader.err(("services", name), "service names are lower-case letters, digits, '-' and '_'")
            continue
        spec = _service(reader, str(name), body, project, networks, volumes, names)
        if spec:
            specs[spec.name] = spec
    assets: dict[str, str] = {}
    for name in specs:
        other = assets.setdefault(specs[name].asset, name)
        if other != name:
            reader.err(("services", name), f"asset key {specs[name].asset!r} collides with service {other!r}")
    _cycles(reader, specs)
    _port_conflicts(reader, specs)
    settings = _settings(ctx, pdoc, pdata, specs)
    state = DesiredState(project, specs, networks, tuple(sorted(volumes.values())), settings, compose_rel,
                         dict(ctx.variables))
    return state, ctx


def validate(tree: ConfigTree, env: Mapping[str, str] | None = None) -> list[SpecError]:
    """Every problem in the config tree, located; an empty list means it is valid."""
    _, ctx = _load(tree, env or {}, None)
    return sorted(set(ctx.errors))


def load_desired_state(tree: ConfigTree, env: Mapping[str, str] | None = None,
                       host_root: str | None = None) -> DesiredState:
    """The desired state of `tree`; raises ConfigInvalid listing every error. `host_root` is where the tree's
    files are on the Docker host (for bind mounts), by default the tree's own folder."""
    state, ctx = _load(tree, env or {}, host_root)
    if ctx.errors or state is None:
        raise ConfigInvalid(ctx.errors or [SpecError(tree.label, 1, "(document)", "could not be loaded")])
    return state
