"""The Docker Engine resource: one client per Engine address, and the operations the assets call — each a thin
method over facts (reads), images, plan (pure) and apply (changes). The SDK is imported on first use."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Callable, Iterable, Mapping, Optional

import dagster as dg

from ..desired.interpolate import secret_names
from ..desired.model import DesiredState, NetworkSpec, ServiceSpec
from ..lazy import docker_sdk
from . import apply, facts, images
from .failures import ImageUnavailable
from .plan import Action, Desired, Live, Plan, plan, plan_service

if TYPE_CHECKING:
    import docker

    from .apply import ApplyResult

_CLIENTS: dict[str, "docker.DockerClient"] = {}
_JOINED: set[tuple[str, str]] = set()  # (Engine, network) this process's container was attached to


class DockerEngine(dg.ConfigurableResource):
    """The Docker Engine the mainframe runs on. `base_url` is a DOCKER_HOST-style address (unix://, tcp://, ssh://);
    empty means the environment's DOCKER_HOST or the local socket — never the Docker CLI's current context."""

    base_url: str = ""
    api_timeout_s: int = 120
    # Where checks reach services: "" = their publications on the host (prodg runs on the host); a network name =
    # the containers' addresses on that network (prodg's runs are containers attached to it).
    probe_network: str = ""
    # Pull NAME as MIRROR/NAME and tag it NAME (an air-gapped host's registry); "" = each image's own registry.
    registry_mirror: str = ""

    @property
    def client(self) -> docker.DockerClient:
        key = self.base_url or os.environ.get("DOCKER_HOST", "")
        if key not in _CLIENTS:
            docker = docker_sdk()
            # never a Docker CLI context (docker-py 7.2 falls back to the CLI's current one when DOCKER_HOST is
            # unset): which Engine prodg changes is named by base_url or DOCKER_HOST, else it is the local socket
            _CLIENTS[key] = (docker.DockerClient(base_url=self.base_url, timeout=self.api_timeout_s)
                             if self.base_url else docker.from_env(timeout=self.api_timeout_s, use_context=False))
        return _CLIENTS[key]

    @property
    def address(self) -> str:
        return self.base_url or os.environ.get("DOCKER_HOST", "") or "unix:///var/run/docker.sock"

    def unreachable(self, exc: BaseException) -> str:
        """A one-line account of an unanswered Engine call (no request dump, no environment)."""
        import requests

        kind = "timed out" if isinstance(exc, requests.exceptions.Timeout) else "cannot be reached"
        root: BaseException = exc
        while root.__context__ is not None and root.__context__ is not root:
            root = root.__context__
        detail = f"{type(root).__name__}: {root}" if root is not exc else type(exc).__name__
        return f"the Docker Engine at {self.address} {kind} ({detail[:200]})"

    # -- reads (facts) ---------------------------------------------------------------------------------------------
    def live(self, project: str, declared_env: Mapping[str, set[str]] | None = None,
             service: str | None = None) -> dict[str, Live]:

        return facts.live_containers(self.client, project, declared_env, service)

    def live_commit(self, project: str, spec: ServiceSpec) -> str:

        return facts.live_commit(self.client, project, spec)

    def image_id(self, ref: str) -> Optional[str]:

        return facts.image_id(self.client, ref)

    def network_facts(self, name: str) -> Optional[dict]:

        return facts.network_facts(self.client, name)

    def bind_sources(self) -> set[str]:
        return facts.bind_sources(self.client)

    def container_health(self, project: str, spec: ServiceSpec) -> tuple[list[str], str]:
        return facts.container_health(self.client, project, spec)

    def endpoint(self, spec: ServiceSpec, container_port: int, protocol: str = "tcp") -> Optional[tuple[str, int]]:
        """Where a check reaches the service's port from here. With `probe_network`, prodg's own container (a run
        container of docker/prod) joins that network first, once: the daemon launches runs on its own network,
        before the mainframe's network exists, and a run container is removed when it ends."""
        if self.probe_network:
            self.join_probe_network()
        return facts.endpoint(self.client, self.probe_network, spec, container_port, protocol)

    def join_probe_network(self) -> str:
        """Attach this process's container to `probe_network` (nothing on the host); see endpoint()."""
        key = (self.address, self.probe_network)
        if key in _JOINED:
            return "already"
        container = facts.own_container()
        if not container:
            return "not in a container"
        done = facts.join_network(self.client, self.probe_network, container)
        if done != "no such network":  # not yet made: asked again at the next check
            _JOINED.add(key)
        return done

    def resolve_image(self, spec: ServiceSpec, state: DesiredState, commit: str, build_root: str | None = None,
                      build: bool = True) -> tuple[str, str]:

        return images.resolve_image(self.client, spec, state, commit, build_root, build, self.registry_mirror)

    def served_digest(self, spec: ServiceSpec) -> str:
        """The digest the registry (or the mirror) serves for the service's image tag now; "" for a built image,
        `pull_policy: never`, or a registry that does not answer (then nothing is claimed either way)."""
        if spec.build is not None or spec.pull_policy == "never":
            return ""
        try:
            return images.registry_digest(self.client, spec.image, self.registry_mirror)
        except ImageUnavailable:
            return ""

    def served_digests(self, specs: Iterable[ServiceSpec]) -> dict[str, str]:
        """Service → served_digest, the registry asked once per image: services sharing an image (a config of many
        small services on one base image) would otherwise cost a registry request each, against a public
        registry's rate limit."""
        asked: dict[tuple[str, bool], str] = {}
        out = {}
        for spec in specs:
            key = (spec.image, spec.build is not None or spec.pull_policy == "never")
            if key not in asked:
                asked[key] = self.served_digest(spec)
            out[spec.name] = asked[key]
        return out

    # -- plan ------------------------------------------------------------------------------------------------------
    def desired(self, state: DesiredState, secrets: Mapping[str, str], commit: str,
                services: list[str] | None = None, build_root: str | None = None,
                registry: bool = True, served: Mapping[str, str] | None = None) -> dict[str, Desired]:
        """What each service's container should look like (images are never built for this); without `registry`,
        no registry is asked for the digest it serves (the digest is then not compared). `served`: the digests
        already asked for (served_digests), else the registry is asked here, once per image."""

        names = services or sorted(state.services)
        if served is None:
            served = self.served_digests(state.services[n] for n in names) if registry else {}
        out = {}
        for name in names:
            spec = state.services[name]
            try:
                _, image = self.resolve_image(spec, state, commit, build_root, build=False)
            except ImageUnavailable:
                image = "(not built)" if spec.build else "(unavailable)"
            files = facts.file_env(spec)
            out[name] = Desired(name, spec.spec_hash(secrets, files),
                                facts.desired_facts(spec, secrets, image, files, served.get(name, "")))
        return out

    def plan(self, state: DesiredState, secrets: Mapping[str, str], commit: str = "",
             prune: bool | None = None, served: Mapping[str, str] | None = None) -> Plan:
        """Desired vs live for every service; changes nothing. `served` as for `desired`."""

        prune = state.settings.deploy.prune if prune is None else prune
        return plan(self.desired(state, secrets, commit, served=served),
                    self.live(state.project, facts.declared_env(state)), prune)

    def rotated_secrets(self, state: DesiredState, secrets: Mapping[str, str], commit: str = "") \
            -> dict[str, tuple[str, ...]]:
        """Service → the secrets whose value at the source differs from what its running container holds, for each
        service whose container differs from its desired state in nothing else: a rotation, not drift. Only which
        environment keys differ is compared (by hash); no value leaves here."""
        desired = self.desired(state, secrets, commit, registry=False)  # only the environment is compared here
        live = self.live(state.project, facts.declared_env(state))
        out: dict[str, tuple[str, ...]] = {}
        for name, want in desired.items():
            have = live.get(name)
            if have is None or set(have.facts.diff(want.facts)) != {"env"}:
                continue
            before, after = dict(have.facts.env), dict(want.facts.env)
            keys = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
            declared = dict(state.services[name].environment)
            names = [secret_names(declared.get(k, "")) for k in keys]
            if names and all(names):
                out[name] = tuple(sorted({n for group in names for n in group}))
        return out

    def plan_service(self, state: DesiredState, secrets: Mapping[str, str], commit: str,
                     service: str) -> tuple[Desired, Action]:
        """Desired vs live for one service, and the desired side it was planned from (computed once): its container
        alone is inspected, its registry alone asked."""

        desired = self.desired(state, secrets, commit, [service])[service]
        live = self.live(state.project, facts.declared_env(state), service=service).get(service)
        return desired, plan_service(desired, live)

    # -- changes (apply) -------------------------------------------------------------------------------------------
    def apply_service(self, state: DesiredState, service: str, secrets: Mapping[str, str], commit: str,
                      build_root: str | None = None, log: Callable[[str], None] = lambda _: None,
                      refresh: bool = False) -> ApplyResult:

        return apply.apply_service(self, state, service, secrets, commit, build_root, log, refresh)

    def ensure_network(self, net: NetworkSpec, project: str) -> tuple[str, str]:

        return apply.ensure_network(self, net, project)

    def remove_service(self, project: str, service: str) -> Optional[str]:

        return apply.remove_service(self, project, service)
