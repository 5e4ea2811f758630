"""The Compose subset the engine implements (image/build, command, environment/env_file, ports, volumes, networks,
healthcheck, restart, labels, user, depends_on, container_name, `x-prodg`), read into ServiceSpecs and NetworkSpecs.
Any other key is a located error, never silently ignored. Pure: reads only through the LoadContext's tree.
Over 300 lines because each field's rules sit beside the field: one reader, top to bottom in the order of a service.
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
import shlex
from typing import Any

from .interpolate import VAR, LoadContext
from .model import (
    DIGEST_REFERENCE,
    LAYERS,
    NUMERIC_USER,
    TRUST_TIERS,
    Build,
    Healthcheck,
    Mount,
    NetworkSpec,
    Port,
    Privileges,
    ServiceSpec,
    content_tree,
    sha256_hex,
)
from .schema import kind_of
from .yamldoc import Doc, Path

SERVICE_KEYS = {
    "image", "build", "command", "environment", "env_file", "ports", "volumes", "networks", "healthcheck",
    "restart", "labels", "user", "depends_on", "container_name", "pull_policy", "x-prodg",
    "privileged", "cap_add", "pid", "network_mode", "devices",
}
# Keys that reach past the container's namespaces: trust tier T1 only (model.Privileges)
PRIVILEGE_KEYS = ("privileged", "cap_add", "pid", "network_mode", "devices")
CAPABILITY = re.compile(r"^(CAP_)?[A-Z][A-Z_]*$")
DEVICE = re.compile(r"^/dev/[^:\s]+(:/dev/[^:\s]+)?(:[rwm]{1,3})?$")
# Compose's pull_policy values prodg honours (engine.images); `daily`, `weekly` and `every_<duration>` are not
PULL_POLICIES = {"missing": "missing", "if_not_present": "missing", "always": "always", "never": "never",
                 "build": "build"}


XPRODG_KEYS = {"layer", "public", "trust_tier", "after", "backup", "internal_ports", "public_ports", "runs_as_root"}
WILDCARD_IPS = ("0.0.0.0", "::")
PORT_PROTO = re.compile(r"^\d{1,5}/(tcp|udp)$")


COMPOSE_TOP_KEYS = {"name", "services", "networks", "volumes"}


DOCKER_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock")


SECRETISH_KEY = re.compile(r"(PASSWORD|PASSWD|SECRET|TOKEN|PRIVATE_KEY|API_KEY|ENCRYPTION_KEY)", re.I)


DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?(?:(\d+(?:\.\d+)?)s)?(?:(\d+)ms)?$")


RESTART = re.compile(r"^(no|always|unless-stopped|on-failure(:\d+)?)$")


def _duration(ctx: LoadContext, doc: Doc, path: Path, value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    m = DURATION.match(str(value).strip()) if isinstance(value, str) and value.strip() else None
    if not m:
        ctx.errors.append(doc.error(path, f"must be a duration like 10s, 1m30s or 500ms, got {value!r}"))
        return 0.0
    h, mi, s, ms = m.groups()
    return float(h or 0) * 3600 + float(mi or 0) * 60 + float(s or 0) + float(ms or 0) / 1000


def _str_list(ctx: LoadContext, doc: Doc, path: Path, value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) and not isinstance(v, bool)
                                              for v in value):
        ctx.errors.append(doc.error(path, f"must be a list of strings, got {kind_of(value)}"))
        return []
    return [str(v) for v in value]


def _kv(ctx: LoadContext, doc: Doc, path: Path, value: Any) -> list[tuple[str, str, Path]]:
    """Compose mapping-or-list form (`KEY: value` or `- KEY=value`) → [(key, value, path)]."""
    out: list[tuple[str, str, Path]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, (dict, list)):
                ctx.errors.append(doc.error(path + (key,), f"must be a string, got {kind_of(item)}"))
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
        ctx.errors.append(doc.error(path, f"must be a mapping or a list of KEY=value, got {kind_of(value)}"))
    return out


class _ComposeReader:
    def __init__(self, ctx: LoadContext, doc: Doc, compose_rel: str, host_root: str, bind_roots: list[str],
                 trees_root: str = "", public_ports: frozenset[str] = frozenset()):
        self.ctx, self.doc = ctx, doc
        self.compose_dir = posixpath.dirname(compose_rel)
        self.host_root = host_root.rstrip("/") or "/"
        self.bind_roots = bind_roots
        self.trees_root = trees_root
        self.public_ports = public_ports  # prodg.yaml host.public_ports
        self.wildcard: list[tuple[Path, Port]] = []  # the last service's publications on every address

    def err(self, path: Path, message: str) -> None:
        self.ctx.errors.append(self.doc.error(path, message))

    def text(self, path: Path, value: Any, allow_secrets: bool = False) -> str | None:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            self.err(path, f"must be a string, got {kind_of(value)}")
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
            self.err(path, f"must be a list, got {kind_of(value)}")
            return []
        out = []
        self.wildcard = []
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
                    if published == "":  # ":CONTAINER": an Engine-picked port is asked for with its address
                        self.err(p, f"publish as [HOST_IP:]HOST_PORT:CONTAINER_PORT[/PROTOCOL] (or "
                                    f"HOST_IP::CONTAINER_PORT for a port the Engine picks), got {text!r}")
                        continue
                else:
                    host_ip, published, target = m.group(1).strip("[]"), m.group(2), m.group(3)
            else:
                self.err(p, f"must be a string or a mapping, got {kind_of(item)}")
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
                if label == "host port" and num == "":
                    nums.append(0)  # "HOST_IP::CONTAINER_PORT": the Engine picks a free host port
                    continue
                try:
                    n = int(str(num))
                    if not 1 <= n <= 65535:
                        raise ValueError
                    nums.append(n)
                except ValueError:
                    self.err(p, f"{label} must be a number from 1 to 65535, got {num!r}")
            if len(nums) == 2:
                out.append(Port(host_ip, nums[0], nums[1], proto))
                if host_ip in WILDCARD_IPS:
                    self.wildcard.append((p, out[-1]))
        return out

    def check_exposure(self, declared: list[str]) -> None:
        """A publication on every address must be public on purpose: its port on prodg.yaml host.public_ports or
        on the service's own x-prodg.public_ports (Docker-published ports bypass the host firewall)."""
        allowed = self.public_ports | set(declared)
        for p, port in self.wildcard:
            if port.host_port == 0:
                self.err(p, f"{port.host_ip}::{port.container_port} asks the Engine for a port on every address; a "
                            f"wildcard publication must be a fixed public port (or publish on 127.0.0.1)")
            elif f"{port.host_port}/{port.protocol}" not in allowed:
                self.err(p, f"{port.host_port}/{port.protocol} is published on every address ({port.host_ip}) but "
                            f"is not public: publish it on 127.0.0.1 (or an internal network), or add it to "
                            f"prodg.yaml host.public_ports or this service's x-prodg.public_ports")

    def volumes(self, path: Path, value: Any, declared: dict[str, str], tier: str) -> list[Mount]:
        if not isinstance(value, list):
            self.err(path, f"must be a list, got {kind_of(value)}")
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

    def privileges(self, path: Path, body: dict, tier: str) -> Privileges:
        """`privileged`, `cap_add`, `pid`, `network_mode` and `devices`: refused unless the service is T1 (the
        seed's tier with "host / Docker socket" reach), and then read as the Engine takes them."""
        given = [key for key in PRIVILEGE_KEYS if key in body]
        if given and tier != "T1":
            for key in given:
                self.err(path + (key,), f"reaches past the container; only trust tier T1 services may "
                                        f"(x-prodg.trust_tier is {tier})")
            return Privileges()
        privileged = body.get("privileged", False)
        if not isinstance(privileged, bool):
            self.err(path + ("privileged",), f"must be true or false, got {kind_of(privileged)}")
            privileged = False
        caps = _str_list(self.ctx, self.doc, path + ("cap_add",), body["cap_add"]) if "cap_add" in body else []
        for i, cap in enumerate(caps):
            if not CAPABILITY.match(cap):
                self.err(path + ("cap_add", i), f"must be a capability name such as NET_ADMIN, got {cap!r}")
        modes = {}
        for key in ("pid", "network_mode"):
            if key in body and body[key] != "host":
                self.err(path + (key,), f"the engine implements only `host`, got {body[key]!r}")
            modes[key] = "host" if body.get(key) == "host" else ""
        if modes["network_mode"] and ("ports" in body or "networks" in body):
            self.err(path + ("network_mode",), "a service on the host's network takes no `ports` or `networks`")
        devices = _str_list(self.ctx, self.doc, path + ("devices",), body["devices"]) if "devices" in body else []
        for i, device in enumerate(devices):
            if not DEVICE.match(device):
                self.err(path + ("devices", i), f"must be /dev/HOST[:/dev/CONTAINER][:rwm], got {device!r}")
        return Privileges(privileged, tuple(c.removeprefix("CAP_") for c in caps), modes["pid"],
                          modes["network_mode"], tuple(devices))

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
        # from a commit: the folder named by the content (see content_tree); from a working folder: the file itself
        host = posixpath.join(content_tree(self.trees_root, digest), rel) if self.trees_root else \
            posixpath.join(self.host_root, rel)
        return Mount("bind", host, target, read_only, config_path=f"{rel}#{digest[:16]}")


def _service(r: _ComposeReader, name: str, body: Any, project: str, networks: dict[str, NetworkSpec],
             volumes: dict[str, str], services: set[str]) -> ServiceSpec | None:
    path: Path = ("services", name)
    if not isinstance(body, dict):
        r.err(path, f"must be a mapping, got {kind_of(body)}")
        return None
    for key in body:
        if key not in SERVICE_KEYS:
            r.err(path + (key,), f"unknown Compose key (the engine implements: {', '.join(sorted(SERVICE_KEYS))})")
    x = body.get("x-prodg")
    layer, tier, public, after, internal, public_ports, root_because = "", "T2", [], [], [], [], ""
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
        if "public_ports" in x:
            public_ports = _str_list(r.ctx, r.doc, path + ("x-prodg", "public_ports"), x["public_ports"])
            for i, text in enumerate(public_ports):
                if not PORT_PROTO.match(text):
                    r.err(path + ("x-prodg", "public_ports", i), f"must look like 443/tcp, got {text!r}")
        if "runs_as_root" in x:
            root_because = r.text(path + ("x-prodg", "runs_as_root"), x["runs_as_root"]) or ""
            if not root_because.strip():
                r.err(path + ("x-prodg", "runs_as_root"), "must say why the service runs as root")
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
            r.err(bp, f"must be a path or a mapping, got {kind_of(b)}")
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
    if image and "@" in image and not DIGEST_REFERENCE.match(image):
        r.err(path + ("image",), f"a digest reference must end in @sha256:<64 hex digits>, got {image!r}")
    image = image or f"{project}/{name}"
    pull_policy = "build" if build else "missing"
    if "pull_policy" in body:
        raw = r.text(path + ("pull_policy",), body["pull_policy"])
        if raw is not None and raw not in PULL_POLICIES:
            r.err(path + ("pull_policy",), f"{raw!r} is not honoured (allowed: {', '.join(sorted(PULL_POLICIES))})")
        elif raw is not None:
            pull_policy = PULL_POLICIES[raw]
            if (pull_policy == "build") != bool(build):
                r.err(path + ("pull_policy",), "`build` goes with a `build:` section, and only with one" if build
                      is None else f"a service built from `build:` is never pulled; got {raw!r}")

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
            r.err(cp, f"must be a string or a list, got {kind_of(c)}")

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
    if ports:
        r.check_exposure(public_ports)
    mounts = r.volumes(path + ("volumes",), body["volumes"], volumes, tier) if "volumes" in body else []

    nets: list[tuple[str, tuple[str, ...]]] = []
    if "networks" in body:
        n, npath = body["networks"], path + ("networks",)
        items = [(k, v) for k, v in n.items()] if isinstance(n, dict) else [(k, None) for k in n] \
            if isinstance(n, list) else None
        if items is None:
            r.err(npath, f"must be a list or a mapping, got {kind_of(n)}")
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
                r.err(npath + (key,), f"must be a mapping, got {kind_of(opts)}")
            nets.append((networks[key].name, tuple(aliases)))
    elif body.get("network_mode") == "host":
        pass
    elif len(networks) == 1:
        nets.append((next(iter(networks.values())).name, ()))
    else:
        r.err(path, "declare the service's `networks` (the Compose file has more than one network)")

    health = None
    if "healthcheck" in body:
        h, hp = body["healthcheck"], path + ("healthcheck",)
        if not isinstance(h, dict):
            r.err(hp, f"must be a mapping, got {kind_of(h)}")
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
        writes_host = [m.source for m in mounts if m.kind == "bind" and not m.read_only and m.config_path is None]
        if user and writes_host and not NUMERIC_USER.match(user):
            r.err(path + ("user",), f"{user!r}: a service that writes to a host folder ({writes_host[0]}) needs a "
                                    f"numeric uid[:gid] such as \"70:70\", so prodg can hand the folder to it before "
                                    f"its first start")

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
        public_ports=tuple(public_ports),
        pull_policy=pull_policy,
        privileges=r.privileges(path, body, tier),
        runs_as_root=root_because.strip(),
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
            if port.engine_picked:
                continue  # each gets its own free port from the Engine: nothing to clash with
            for other_ip, other in seen.get((port.host_port, port.protocol), []):
                wildcard = {"0.0.0.0", "::"}
                if port.host_ip == other_ip or port.host_ip in wildcard or other_ip in wildcard:
                    r.err(("services", name, "ports", i),
                          f"host port {port.host_port}/{port.protocol} on {port.host_ip} is already published by "
                          f"service {other!r}")
                    break
            seen.setdefault((port.host_port, port.protocol), []).append((port.host_ip, name))


def read_compose(ctx: LoadContext, cdoc: Doc, compose_rel: str, host_root: str, bind_roots: list[str],
                 trees_root: str = "", public_ports: frozenset[str] = frozenset()) -> tuple[str, dict[str, ServiceSpec], dict[str, NetworkSpec],
                                                dict[str, str]] | None:
    """(project, services, networks, volumes) of the Compose file `cdoc`; None when it has no services at all.
    `host_root` is where the tree's files are on the Docker host; `bind_roots` the allowed absolute bind sources;
    `trees_root`, when set, where the content trees of a commit's config binds lie (one folder per content)."""
    data = cdoc.data
    for key in data:
        if key not in COMPOSE_TOP_KEYS and not str(key).startswith("x-"):
            ctx.errors.append(cdoc.error((key,), f"unknown top-level Compose key (allowed: "
                                                 f"{', '.join(sorted(COMPOSE_TOP_KEYS))}, x-*)"))
    project = ctx.interpolate(cdoc, ("name",), str(data.get("name", "prodg")))
    networks = _networks(ctx, cdoc, project)
    volumes: dict[str, str] = {}
    raw_vols = data.get("volumes", {}) or {}
    if not isinstance(raw_vols, dict):
        ctx.errors.append(cdoc.error(("volumes",), f"must be a mapping, got {kind_of(raw_vols)}"))
        raw_vols = {}
    for key, v in raw_vols.items():
        volumes[str(key)] = str((v or {}).get("name", f"{project}_{key}")) if isinstance(v, dict) or v is None \
            else f"{project}_{key}"
    raw_services = data.get("services")
    if not isinstance(raw_services, dict) or not raw_services:
        ctx.errors.append(cdoc.error(("services",), "must be a mapping of at least one service"))
        return None
    reader = _ComposeReader(ctx, cdoc, compose_rel, host_root, bind_roots, trees_root, public_ports)
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
    return project, specs, networks, volumes


def _networks(ctx: LoadContext, cdoc: Doc, project: str) -> dict[str, NetworkSpec]:
    networks: dict[str, NetworkSpec] = {}
    raw_nets = cdoc.data.get("networks", {}) or {}
    if not isinstance(raw_nets, dict):
        ctx.errors.append(cdoc.error(("networks",), f"must be a mapping, got {kind_of(raw_nets)}"))
        raw_nets = {}
    for key, n in raw_nets.items():
        n = n or {}
        np_: Path = ("networks", key)
        if not isinstance(n, dict):
            ctx.errors.append(cdoc.error(np_, f"must be a mapping, got {kind_of(n)}"))
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
    return networks
