"""The Compose subset the engine implements (image/build, command, environment/env_file, ports, volumes, networks,
healthcheck, restart, labels, user, depends_on, container_name, pull_policy, `x-prodg`, and for trust tier T1 the
privilege keys), read into ServiceSpecs and NetworkSpecs. Any other key is a located error, never silently ignored.
Pure: reads only through the LoadContext's tree.
Long because each key's rules sit in their own reader: a `_ComposeReader` method per key reports that key's located
errors and returns its typed value; `_service` calls them in the order of a service, then applies the rules that span
keys (each a `check_*` method, or `image_reference` and `privileges`), and builds the ServiceSpec.
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
import shlex
from functools import partial
from typing import Any, Callable, NamedTuple, Sequence, TypeVar

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

T = TypeVar("T")


class _XProdg(NamedTuple):
    """A service's `x-prodg` as read; `layer` and `tier` as written (the ServiceSpec keeps only valid ones)."""
    layer: Any = ""
    tier: Any = "T2"
    public: Sequence[str] = ()
    after: Sequence[str] = ()
    public_ports: Sequence[str] = ()
    runs_as_root: str = ""
    internal_ports: Sequence[int] = ()


def _megabytes(size: int) -> str:
    return f"{size / 1_000_000:,.1f} MB"


class _ComposeReader:
    """Reads one Compose file: a method per key, given the key's path and value, reports that key's located errors
    and returns its typed value."""

    def __init__(self, ctx: LoadContext, doc: Doc, compose_rel: str, host_root: str, bind_roots: list[str],
                 trees_root: str = "", public_ports: frozenset[str] = frozenset(), build_context_max_bytes: int = 0):
        self.ctx, self.doc = ctx, doc
        self.build_context_max_bytes = build_context_max_bytes  # prodg.yaml deploy.build_context_max_mb (0: none)
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

    def read_key(self, path: Path, mapping: dict, key: str, reader: Callable[..., T], default: T, *args: Any) -> T:
        """`reader`'s value of mapping[key], located at path + (key,); `default` when the key is absent."""
        return reader(path + (key,), mapping[key], *args) if key in mapping else default

    def str_list(self, path: Path, value: Any) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) and not isinstance(v, bool)
                                                  for v in value):
            self.err(path, f"must be a list of strings, got {kind_of(value)}")
            return []
        return [str(v) for v in value]

    def kv(self, path: Path, value: Any) -> list[tuple[str, str, Path]]:
        """Compose mapping-or-list form (`KEY: value` or `- KEY=value`) → [(key, value, path)]."""
        out: list[tuple[str, str, Path]] = []
        if isinstance(value, dict):
            for key, item in value.items():
                if isinstance(item, (dict, list)):
                    self.err(path + (key,), f"must be a string, got {kind_of(item)}")
                    continue
                text = "" if item is None else ("true" if item is True else "false" if item is False else str(item))
                out.append((str(key), text, path + (key,)))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if not isinstance(item, str) or "=" not in item:
                    self.err(path + (i,), f"must be KEY=value, got {item!r}")
                    continue
                key, _, text = item.partition("=")
                out.append((key, text, path + (i,)))
        else:
            self.err(path, f"must be a mapping or a list of KEY=value, got {kind_of(value)}")
        return out

    def duration(self, path: Path, value: Any) -> float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        m = DURATION.match(str(value).strip()) if isinstance(value, str) and value.strip() else None
        if not m:
            self.err(path, f"must be a duration like 10s, 1m30s or 500ms, got {value!r}")
            return 0.0
        h, mi, s, ms = m.groups()
        return float(h or 0) * 3600 + float(mi or 0) * 60 + float(s or 0) + float(ms or 0) / 1000

    def x_prodg(self, path: Path, value: Any) -> _XProdg:
        """`x-prodg`, prodg's own keys of a service; a service without it is reported on the service itself."""
        if not isinstance(value, dict):
            self.err(path[:-1], "missing `x-prodg` with the service's `layer`")
            return _XProdg()
        for key in value:
            if key not in XPRODG_KEYS:
                self.err(path + (key,), f"unknown key (allowed: {', '.join(sorted(XPRODG_KEYS))})")
        if "layer" not in value:
            self.err(path, "missing `layer`")
        read = partial(self.read_key, path, value)  # `backup` is allowed, read nowhere
        return _XProdg(layer=read("layer", self.layer, ""), tier=read("trust_tier", self.trust_tier, "T2"),
                       public=read("public", self.str_list, ()), after=read("after", self.str_list, ()),
                       public_ports=read("public_ports", self.own_public_ports, ()),
                       runs_as_root=read("runs_as_root", self.runs_as_root, ""),
                       internal_ports=read("internal_ports", self.internal_ports, ()))

    def layer(self, path: Path, value: Any) -> Any:
        if value not in LAYERS:
            self.err(path, f"must be one of {', '.join(LAYERS)}, got {value!r}")
        return value

    def trust_tier(self, path: Path, value: Any) -> Any:
        if value not in TRUST_TIERS:
            self.err(path, f"must be one of {', '.join(TRUST_TIERS)}, got {value!r}")
        return value

    def own_public_ports(self, path: Path, value: Any) -> list[str]:
        """`x-prodg.public_ports`: the service's ports published on every address on purpose, as PORT/PROTOCOL."""
        ports = self.str_list(path, value)
        for i, text in enumerate(ports):
            if not PORT_PROTO.match(text):
                self.err(path + (i,), f"must look like 443/tcp, got {text!r}")
        return ports

    def runs_as_root(self, path: Path, value: Any) -> str:
        because = self.text(path, value) or ""
        if not because.strip():
            self.err(path, "must say why the service runs as root")
        return because

    def internal_ports(self, path: Path, value: Any) -> Sequence[int]:
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            self.err(path, "must be a list of port numbers")
            return ()
        return value

    def build(self, path: Path, value: Any) -> Build | None:
        """`build`: a context folder in the config tree, as a path or a mapping (context, dockerfile, args)."""
        if isinstance(value, str):
            value = {"context": value}
        if not isinstance(value, dict):
            self.err(path, f"must be a path or a mapping, got {kind_of(value)}")
            return None
        for key in set(value) - {"context", "dockerfile", "args"}:
            self.err(path + (key,), "unknown key (allowed: args, context, dockerfile)")
        ctx_rel = self.config_rel(path + ("context",), str(value.get("context", ".")))
        ctx_files = list(self.ctx.tree.files_under(ctx_rel)) if ctx_rel is not None else []
        if ctx_rel is not None and not ctx_files:
            self.err(path + ("context",), f"build context {ctx_rel!r} does not exist in the config tree")
        args = self.kv(path + ("args",), value["args"]) if "args" in value else []
        if ctx_rel is None:
            return None
        size = sum(self.ctx.tree.size(f) for f in ctx_files)
        if self.build_context_max_bytes and size > self.build_context_max_bytes:
            # refused before a byte of it is read: hashing, laying out and sending it to the Engine would each
            # read all of it (its files' sizes come from the tree's listing)
            self.err(path + ("context",), f"build context {ctx_rel!r} is {_megabytes(size)} in {len(ctx_files)} "
                                          f"files, above deploy.build_context_max_mb "
                                          f"({_megabytes(self.build_context_max_bytes)}): move what the image does "
                                          f"not need out of it, or raise the limit in prodg.yaml")
            return None
        return Build(ctx_rel, str(value.get("dockerfile", "Dockerfile")),
                     tuple((k, self.ctx.interpolate(self.doc, p, v)) for k, v, p in args), self.tree_digest(ctx_files))

    def image_reference(self, path: Path, image: str | None, build: Build | None, built: str) -> str:
        """The image a service runs: its `image` (a digest reference whole), else `built`, the one `build` makes."""
        if not image and not build:
            self.err(path, "needs `image` or `build`")
        if image and "@" in image and not DIGEST_REFERENCE.match(image):
            self.err(path + ("image",), f"a digest reference must end in @sha256:<64 hex digits>, got {image!r}")
        return image or built

    def pull_policy(self, path: Path, value: Any, build: Build | None) -> str | None:
        """The engine's policy for a `pull_policy` it honours (`build` only with a `build:` section); else None."""
        raw = self.text(path, value)
        if raw is None:
            return None
        if raw not in PULL_POLICIES:
            self.err(path, f"{raw!r} is not honoured (allowed: {', '.join(sorted(PULL_POLICIES))})")
            return None
        policy = PULL_POLICIES[raw]
        if (policy == "build") != bool(build):
            self.err(path, "`build` goes with a `build:` section, and only with one" if build is None
                     else f"a service built from `build:` is never pulled; got {raw!r}")
        return policy

    def command(self, path: Path, value: Any) -> tuple[str, ...] | None:
        if isinstance(value, str):
            text = self.text(path, value)
            try:
                return tuple(shlex.split(text or ""))
            except ValueError as exc:
                self.err(path, f"cannot split command: {exc}")
                return None
        if isinstance(value, list):
            return tuple(x for i, v in enumerate(value) if (x := self.text(path + (i,), v)) is not None)
        self.err(path, f"must be a string or a list, got {kind_of(value)}")
        return None

    def environment(self, path: Path, value: Any) -> list[tuple[str, str]]:
        """`environment`: the one key whose values may reference secrets, and the only way a secret comes in."""
        out = []
        for key, text, p in self.kv(path, value):
            literal = text.strip() and not VAR.search(text.replace("$$", ""))
            if literal and (key in self.ctx.secrets or (SECRETISH_KEY.search(key) and not key.endswith("_FILE"))):
                self.err(p, f"looks like a secret written literally; reference it as ${{{key}}} and keep the value "
                            f"in the secrets source")
            out.append((key, self.ctx.interpolate(self.doc, p, text, allow_secrets=True)))
        return out

    def env_file(self, path: Path, value: Any) -> list[str]:
        out = []
        for i, item in enumerate([value] if isinstance(value, str) else value if isinstance(value, list) else [None]):
            p = path + ((i,) if isinstance(value, list) else ())
            if item is None:
                self.err(p, "must be a path or a list of paths")
                continue
            text = self.text(p, item)
            if text is None:
                continue
            if not text.startswith("/"):
                self.err(p, "env_file must be an absolute host path (secret files never live in the config repo)")
                continue
            out.append(text)
        return out

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

    def networks(self, path: Path, value: Any, declared: dict[str, NetworkSpec]) -> list[tuple[str, tuple[str, ...]]]:
        """`networks` as (network name, aliases), each one declared under top-level `networks`."""
        items = [(k, v) for k, v in value.items()] if isinstance(value, dict) else [(k, None) for k in value] \
            if isinstance(value, list) else None
        if items is None:
            self.err(path, f"must be a list or a mapping, got {kind_of(value)}")
            items = []
        out = []
        for key, opts in items:
            if not isinstance(key, str) or key not in declared:
                self.err(path, f"network {key!r} is not declared under top-level `networks`")
                continue
            aliases: list[str] = []
            if isinstance(opts, dict):
                for k in set(opts) - {"aliases"}:
                    self.err(path + (key, k), "unknown key (allowed: aliases)")
                aliases = self.str_list(path + (key, "aliases"), opts.get("aliases", []))
            elif opts is not None:
                self.err(path + (key,), f"must be a mapping, got {kind_of(opts)}")
            out.append((declared[key].name, tuple(aliases)))
        return out

    def default_networks(self, path: Path, declared: dict[str, NetworkSpec],
                         network_mode: Any) -> list[tuple[str, tuple[str, ...]]]:
        """A service without `networks`: none on the host's network, else the Compose file's one network."""
        if network_mode == "host":
            return []
        if len(declared) == 1:
            return [(next(iter(declared.values())).name, ())]
        self.err(path, "declare the service's `networks` (the Compose file has more than one network)")
        return []

    def healthcheck(self, path: Path, value: Any) -> Healthcheck | None:
        """`healthcheck`; None when disabled or its test cannot be read."""
        if not isinstance(value, dict):
            self.err(path, f"must be a mapping, got {kind_of(value)}")
            return None
        for key in set(value) - {"test", "interval", "timeout", "retries", "start_period", "disable"}:
            self.err(path + (key,), "unknown key (allowed: disable, interval, retries, start_period, test, timeout)")
        test = value.get("test")
        if isinstance(test, str):
            test_t = ("CMD-SHELL", self.text(path + ("test",), test) or "")
        elif isinstance(test, list) and test and test[0] in ("CMD", "CMD-SHELL", "NONE"):
            test_t = tuple(self.text(path + ("test", i), v) or "" for i, v in enumerate(test))
        else:
            self.err(path + ("test",), "must be a string or a list starting with CMD, CMD-SHELL or NONE")
            test_t = ()
        retries = value.get("retries", 3)
        if not isinstance(retries, int) or isinstance(retries, bool) or retries < 1:
            self.err(path + ("retries",), f"must be a positive integer, got {retries!r}")
            retries = 3
        if value.get("disable") or not test_t:
            return None
        return Healthcheck(test_t, self.duration(path + ("interval",), value.get("interval", "30s")),
                           self.duration(path + ("timeout",), value.get("timeout", "30s")), retries,
                           self.duration(path + ("start_period",), value.get("start_period", "0s")))

    def restart(self, path: Path, value: Any) -> str:
        restart = str(value)
        if not RESTART.match(restart):
            self.err(path, f"must be no, always, unless-stopped or on-failure[:N], got {restart!r}")
        return restart

    def labels(self, path: Path, value: Any) -> list[tuple[str, str]]:
        out = []
        for key, text, p in self.kv(path, value):
            if key.startswith("prodg."):
                self.err(p, "labels starting with 'prodg.' are set by the engine")
            out.append((key, self.ctx.interpolate(self.doc, p, text)))
        return out

    def check_user(self, path: Path, user: str | None, mounts: list[Mount]) -> None:
        """A named `user` cannot be given a host folder: one the service writes to needs a numeric uid[:gid]."""
        writes_host = [m.source for m in mounts if m.kind == "bind" and not m.read_only and m.config_path is None]
        if user and writes_host and not NUMERIC_USER.match(user):
            self.err(path, f"{user!r}: a service that writes to a host folder ({writes_host[0]}) needs a numeric "
                           f"uid[:gid] such as \"70:70\", so prodg can hand the folder to it before its first start")

    def depends_on(self, path: Path, value: Any) -> list[str]:
        """`depends_on` as a list of names or a mapping (condition, required, restart: accepted, not used)."""
        if not isinstance(value, dict):
            return self.str_list(path, value)
        for key, opts in value.items():
            if isinstance(opts, dict):
                for k in set(opts) - {"condition", "restart", "required"}:
                    self.err(path + (key, k), "unknown key (allowed: condition, required, restart)")
        return [str(k) for k in value]

    def check_dependencies(self, path: Path, name: str, services: set[str], depends: list[str],
                           after: Sequence[str]) -> None:
        """`depends_on` and `x-prodg.after` name other services of the Compose file."""
        for field, names in (("depends_on", depends), ("x-prodg", after)):
            for dep in names:
                if dep not in services:
                    self.err(path + (field,), f"names service {dep!r}, which the Compose file does not declare")
                elif dep == name:
                    self.err(path + (field,), "a service cannot depend on itself")

    def privileges(self, path: Path, body: dict, tier: str) -> Privileges:
        """`privileged`, `cap_add`, `pid`, `network_mode` and `devices`: refused unless the service is T1 (the
        seed's tier with "host / Docker socket" reach), and then each read as the Engine takes it."""
        given = [key for key in PRIVILEGE_KEYS if key in body]
        if given and tier != "T1":
            for key in given:
                self.err(path + (key,), f"reaches past the container; only trust tier T1 services may "
                                        f"(x-prodg.trust_tier is {tier})")
            return Privileges()
        read = partial(self.read_key, path, body)
        privileged, caps = read("privileged", self.privileged, False), read("cap_add", self.cap_add, ())
        pid, network_mode = read("pid", self.host_mode, ""), read("network_mode", self.host_mode, "")
        if network_mode and ("ports" in body or "networks" in body):
            self.err(path + ("network_mode",), "a service on the host's network takes no `ports` or `networks`")
        return Privileges(privileged, caps, pid, network_mode, read("devices", self.devices, ()))

    def privileged(self, path: Path, value: Any) -> bool:
        if not isinstance(value, bool):
            self.err(path, f"must be true or false, got {kind_of(value)}")
            return False
        return value

    def cap_add(self, path: Path, value: Any) -> tuple[str, ...]:
        caps = self.str_list(path, value)
        for i, cap in enumerate(caps):
            if not CAPABILITY.match(cap):
                self.err(path + (i,), f"must be a capability name such as NET_ADMIN, got {cap!r}")
        return tuple(c.removeprefix("CAP_") for c in caps)

    def host_mode(self, path: Path, value: Any) -> str:
        """`pid` or `network_mode`: "host" (the host's namespace) is the one value the engine implements."""
        if value != "host":
            self.err(path, f"the engine implements only `host`, got {value!r}")
            return ""
        return "host"

    def devices(self, path: Path, value: Any) -> tuple[str, ...]:
        devices = self.str_list(path, value)
        for i, device in enumerate(devices):
            if not DEVICE.match(device):
                self.err(path + (i,), f"must be /dev/HOST[:/dev/CONTAINER][:rwm], got {device!r}")
        return tuple(devices)


def _service(r: _ComposeReader, name: str, body: Any, project: str, networks: dict[str, NetworkSpec],
             volumes: dict[str, str], services: set[str]) -> ServiceSpec | None:
    """A service's ServiceSpec: each key read by its reader (in this order, the order its errors come in), then the
    rules across keys."""
    path: Path = ("services", name)
    if not isinstance(body, dict):
        r.err(path, f"must be a mapping, got {kind_of(body)}")
        return None
    for key in body:
        if key not in SERVICE_KEYS:
            r.err(path + (key,), f"unknown Compose key (the engine implements: {', '.join(sorted(SERVICE_KEYS))})")
    read = partial(r.read_key, path, body)
    x = r.x_prodg(path + ("x-prodg",), body.get("x-prodg"))
    image = read("image", r.text, None)
    build = read("build", r.build, None)
    image = r.image_reference(path, image, build, f"{project}/{name}")
    pull_policy = read("pull_policy", r.pull_policy, None, build) or ("build" if build else "missing")
    command = read("command", r.command, None)
    environment = read("environment", r.environment, [])
    env_files = read("env_file", r.env_file, [])
    ports = read("ports", r.ports, [])
    if ports:
        r.check_exposure(x.public_ports)
    mounts = read("volumes", r.volumes, [], volumes, x.tier)
    nets = r.networks(path + ("networks",), body["networks"], networks) if "networks" in body \
        else r.default_networks(path, networks, body.get("network_mode"))
    health = read("healthcheck", r.healthcheck, None)
    restart = read("restart", r.restart, "no")
    labels = read("labels", r.labels, [])
    user = read("user", r.text, None)
    r.check_user(path + ("user",), user, mounts)
    depends = read("depends_on", r.depends_on, [])
    r.check_dependencies(path, name, services, depends, x.after)
    container_name = read("container_name", r.text, None)
    return ServiceSpec(
        name=name,
        container_name=container_name or name,
        layer=x.layer if x.layer in LAYERS else "",
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
        after=tuple(sorted(set(x.after) & services - {name})),
        public_domains=tuple(x.public),
        trust_tier=x.tier if x.tier in TRUST_TIERS else "T2",
        internal_ports=tuple(x.internal_ports),
        public_ports=tuple(x.public_ports),
        pull_policy=pull_policy,
        privileges=r.privileges(path, body, x.tier),  # the privilege keys, read last (their errors come last)
        runs_as_root=x.runs_as_root.strip(),
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
                 trees_root: str = "", public_ports: frozenset[str] = frozenset(),
                 build_context_max_bytes: int = 0) \
        -> tuple[str, dict[str, ServiceSpec], dict[str, NetworkSpec], dict[str, str]] | None:
    """(project, services, networks, volumes) of the Compose file `cdoc`; None when it has no services at all.
    `host_root` is where the tree's files are on the Docker host; `bind_roots` the allowed absolute bind sources;
    `trees_root`, when set, where the content trees of a commit's config binds lie (one folder per content);
    `build_context_max_bytes`, when set, the largest build context accepted."""
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
    reader = _ComposeReader(ctx, cdoc, compose_rel, host_root, bind_roots, trees_root, public_ports,
                            build_context_max_bytes)
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
