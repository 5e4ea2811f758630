"""The Docker Engine adapter: live state, images, networks, and apply-with-rollback, through the Engine API only."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Mapping, Optional

import dagster as dg

from ..lazy import LazyModule
from ..spec.model import DesiredState, NetworkSpec, ServiceSpec
from .facts import (
    LABEL_COMMIT,
    LABEL_PROJECT,
    LABEL_SERVICE,
    LABEL_SPEC_HASH,
    desired_facts,
    observed_facts,
    resolve_env,
)
from .plan import CREATE, UNCHANGED, Desired, Live, Plan, plan, plan_service
from .secrets import parse_env_file, redact

if TYPE_CHECKING:
    import docker

_CLIENTS: dict[str, "docker.DockerClient"] = {}


def sdk():
    """The Docker SDK, imported on first use: loading the code location does not pay for it (and for requests)."""
    import docker
    import docker.errors
    import docker.types

    return docker


errors = LazyModule("docker.errors")


class ApplyFailed(Exception):
    """A service could not be brought to its desired state; the previous container (if any) is back in service."""

    def __init__(self, service: str, reason: str, logs: str = ""):
        self.service, self.reason, self.logs = service, reason, logs
        super().__init__(f"{service}: {reason}" + (f"\n--- last log lines ---\n{logs}" if logs else ""))


class ImageUnavailable(Exception):
    pass


@dataclass(frozen=True)
class ApplyResult:
    service: str
    action: str  # created | recreated | unchanged | rolled_back
    container_id: str
    image_id: str
    image: str
    diff_markdown: str
    spec_hash: str


def engine_unreachable(exc: BaseException) -> bool:
    """The Engine did not answer at all (socket gone, daemon down, connection cut or timed out) — as opposed to
    answering with an error."""
    import requests

    return isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)) or (
        isinstance(exc, errors.DockerException) and not isinstance(exc, errors.APIError)
        and "Error while fetching server API version" in str(exc))


def _ns(seconds: float) -> int:
    return int(seconds * 1_000_000_000)


class DockerEngine(dg.ConfigurableResource):
    """The Docker Engine the mainframe runs on. `base_url` is a DOCKER_HOST-style address (unix://, tcp://, ssh://);
    empty means the environment's DOCKER_HOST or the local socket."""

    base_url: str = ""
    api_timeout_s: int = 120
    # Where checks reach services: "" = their publications on the host (prodg runs on the host); a network name =
    # the containers' addresses on that network (prodg's runs are containers attached to it).
    probe_network: str = ""

    @property
    def client(self) -> docker.DockerClient:
        key = self.base_url or os.environ.get("DOCKER_HOST", "")
        if key not in _CLIENTS:
            docker = sdk()
            _CLIENTS[key] = (docker.DockerClient(base_url=self.base_url, timeout=self.api_timeout_s)
                             if self.base_url else docker.from_env(timeout=self.api_timeout_s))
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

    # -- facts ---------------------------------------------------------------------------------------------------
    def live(self, project: str, declared_env: Mapping[str, set[str]] | None = None,
             service: str | None = None) -> dict[str, Live]:
        """Managed containers of `project` (or of its one `service`), by service: one list call, filtered by label,
        with each container's inspect data."""
        out: dict[str, Live] = {}
        image_env: dict[str, tuple[dict[str, str], dict[str, str]]] = {}
        labels_wanted = [f"{LABEL_PROJECT}={project}"] + ([f"{LABEL_SERVICE}={service}"] if service else [])
        for c in self.client.containers.list(all=True, filters={"label": labels_wanted}):
            labels = c.labels
            service = labels.get(LABEL_SERVICE)
            if not service or "-prodg-previous-" in c.name or c.name.endswith("-prodg-candidate"):
                continue
            image_id = c.attrs.get("Image", "")
            if image_id not in image_env:
                image_env[image_id] = self._image_env(image_id)
            env, labels_of_image = image_env[image_id]
            facts = observed_facts(c.attrs, (declared_env or {}).get(service, set()), env, labels_of_image)
            out[service] = Live(service, c.id, c.name, labels.get(LABEL_SPEC_HASH, ""), labels.get(LABEL_COMMIT, ""),
                                facts)
        return out

    def live_commit(self, project: str, spec: ServiceSpec) -> str:
        """The commit that created the service's current container ("" when there is none): one inspect, no facts."""
        try:
            labels = self.client.api.inspect_container(spec.container_name)["Config"].get("Labels") or {}
        except errors.NotFound:
            return ""
        return labels.get(LABEL_COMMIT, "") if labels.get(LABEL_PROJECT) == project else ""

    def _image_env(self, image_id: str) -> tuple[dict[str, str], dict[str, str]]:
        """(env, labels) the image itself sets."""
        try:
            config = self.client.api.inspect_image(image_id).get("Config") or {}
        except errors.NotFound:
            return {}, {}
        return dict(item.partition("=")[::2] for item in config.get("Env") or []), dict(config.get("Labels") or {})

    @staticmethod
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

    def declared_env(self, state: DesiredState) -> dict[str, set[str]]:
        return {n: {k for k, _ in s.environment} | set(self.file_env(s)) for n, s in state.services.items()}

    def image_id(self, ref: str) -> Optional[str]:
        try:
            return self.client.api.inspect_image(ref)["Id"]
        except (errors.ImageNotFound, errors.NotFound):
            return None

    def resolve_image(self, spec: ServiceSpec, state: DesiredState, commit: str, build_root: str | None = None,
                      build: bool = True) -> tuple[str, str]:
        """(image reference, image id) the service runs. A `build:` service is built from the config tree at
        `commit` and tagged with the commit; an image the Engine lacks is replaced by its local stand-in
        (prodg.yaml images.local) — never pulled here, since the mainframe's images come pre-pulled or built."""
        if spec.build is not None:
            repo = spec.image.rsplit(":", 1)[0] if ":" in spec.image.rsplit("/", 1)[-1] else spec.image
            source_tag = f"{repo}:src-{spec.build.digest[:16]}"
            tag = f"{repo}:{commit[:12]}" if commit else source_tag
            existing = self.image_id(source_tag)
            if not existing and build:
                context = os.path.join(build_root or "", spec.build.context)
                try:
                    image, _ = self.client.images.build(path=context, dockerfile=spec.build.dockerfile,
                                                        tag=source_tag, buildargs=dict(spec.build.args) or None,
                                                        rm=True, forcerm=True, labels={LABEL_SERVICE: spec.name})
                except (errors.BuildError, errors.APIError) as exc:
                    raise ApplyFailed(spec.name, f"image build from {spec.build.context} failed: {exc}") from None
                existing = image.id
            if not existing:
                raise ImageUnavailable(f"{spec.name}: image {source_tag} has not been built yet")
            if build and tag != source_tag:
                self.client.api.tag(existing, repo, tag.rsplit(":", 1)[1])  # lineage: the commit that deployed it
            return tag, existing
        found = self.image_id(spec.image)
        if found:
            return spec.image, found
        local = (state.settings.images.get("local") or {}).get(spec.image)
        if local:
            found = self.image_id(local)
            if found:
                return local, found
        hint = f" or its local stand-in {local}" if local else ""
        raise ImageUnavailable(f"{spec.name}: image {spec.image}{hint} is not on the Engine and no registry is "
                               f"reachable from here (docker/images/build.sh builds the stand-ins)")

    # -- network -------------------------------------------------------------------------------------------------
    def ensure_network(self, net: NetworkSpec, project: str) -> tuple[str, str]:
        """(action, network id): create the network with its declared subnet, or confirm it."""
        found = self.client.networks.list(names=[net.name])
        match = [n for n in found if n.name == net.name]
        if match:
            return "unchanged", match[0].id
        if net.external:
            raise ApplyFailed(net.key, f"external network {net.name} does not exist (it is created outside prodg)")
        ipam = None
        if net.subnet:
            types = sdk().types
            ipam = types.IPAMConfig(pool_configs=[types.IPAMPool(subnet=net.subnet)])
        created = self.client.networks.create(net.name, driver=net.driver, ipam=ipam,
                                              labels={LABEL_PROJECT: project, "prodg.network": net.key})
        return "created", created.id

    def network_facts(self, name: str) -> Optional[dict]:
        try:
            return self.client.api.inspect_network(name)
        except errors.NotFound:
            return None

    # -- plan ----------------------------------------------------------------------------------------------------
    def desired(self, state: DesiredState, secrets: Mapping[str, str], commit: str,
                services: list[str] | None = None, build_root: str | None = None) -> dict[str, Desired]:
        out = {}
        for name in services or sorted(state.services):
            spec = state.services[name]
            try:
                _, image_id = self.resolve_image(spec, state, commit, build_root, build=False)
            except ImageUnavailable:
                image_id = "(not built)" if spec.build else "(unavailable)"
            files = self.file_env(spec)
            out[name] = Desired(name, spec.spec_hash(secrets, files), desired_facts(spec, secrets, image_id, files))
        return out

    def plan(self, state: DesiredState, secrets: Mapping[str, str], commit: str = "",
             prune: bool | None = None) -> Plan:
        """Desired vs live for every service; changes nothing."""
        declared = self.declared_env(state)
        prune = bool(state.settings.deploy.get("prune")) if prune is None else prune
        return plan(self.desired(state, secrets, commit), self.live(state.project, declared), prune)

    # -- apply ---------------------------------------------------------------------------------------------------
    def apply_service(self, state: DesiredState, service: str, secrets: Mapping[str, str], commit: str,
                      build_root: str | None = None, log: Callable[[str], None] = lambda _: None) -> ApplyResult:
        """Bring one service to its desired state. A recreate keeps the previous container (stopped and renamed)
        until the new one is healthy; if the new one fails, it is removed, the previous one restored, and
        ApplyFailed is raised with the reason and the new container's last log lines."""
        try:
            return self._apply_service(state, service, secrets, commit, build_root, log)
        except ApplyFailed:
            raise
        except Exception as exc:
            if engine_unreachable(exc):
                raise ApplyFailed(service, f"{self.unreachable(exc)}; nothing is removed while it cannot be "
                                           f"reached, and a retry finishes or undoes what was begun") from None
            raise

    def _apply_service(self, state: DesiredState, service: str, secrets: Mapping[str, str], commit: str,
                       build_root: str | None, log: Callable[[str], None]) -> ApplyResult:
        spec = state.services[service]
        deploy = state.settings.deploy
        health_timeout = float(deploy.get("health_timeout_s", 120))
        self._recover_interrupted(spec, state.project, secrets, health_timeout, log)
        image, image_id = self.resolve_image(spec, state, commit, build_root)
        files = self.file_env(spec, strict=True)
        want_hash = spec.spec_hash(secrets, files)
        desired = Desired(service, want_hash, desired_facts(spec, secrets, image_id, files))
        live = self.live(state.project, {service: {k for k, _ in spec.environment} | set(files)},
                         service=service).get(service)
        action = plan_service(desired, live)
        if action.kind == UNCHANGED:
            return ApplyResult(service, "unchanged", live.container_id, image_id, image, action.markdown(), want_hash)
        for net in state.networks.values():
            if any(net.name == n for n, _ in spec.networks):
                self.ensure_network(net, state.project)
        for mount in spec.volumes:
            if mount.kind == "bind" and mount.config_path is None and not os.path.exists(mount.source):
                os.makedirs(mount.source, exist_ok=True)  # data folders, as `docker compose` would create them
        if live is not None and live.facts.running and not any(not m.read_only for m in spec.volumes):
            # Stateless: prove the new container healthy beside the serving one (no ports, no aliases) first, so
            # a bad release never interrupts the service. Stateful services (writable mounts) cannot run twice.
            self._trial(spec, state, image, secrets, want_hash, commit, health_timeout, log)
        previous = None
        if live is not None:
            previous = self.client.containers.get(live.container_id)
            log(f"{service}: stopping previous container {previous.short_id} (kept until the new one is healthy)")
            previous.stop(timeout=int(deploy.get("stop_timeout_s", 20)))
            previous.rename(f"{spec.container_name}-prodg-previous-{previous.short_id}")
            self.client.api.update_container(previous.id, restart_policy={"Name": "no"})
        else:
            self._remove_stray(spec.container_name)
        new_id = None
        try:
            new_id = self._create(spec, state, image, secrets, want_hash, commit)
            self.client.api.start(new_id)
            log(f"{service}: started {new_id[:12]} from {image}; waiting for health (up to {health_timeout:.0f}s)")
            self._wait_healthy(spec, new_id, health_timeout, secrets)
        except Exception as exc:
            if isinstance(exc, ApplyFailed):
                reason, logs = exc.reason, exc.logs
            elif engine_unreachable(exc):
                reason, logs = f"{self.unreachable(exc)} while the new container was being started", ""
            else:
                reason, logs = redact(str(exc), secrets), ""
            try:
                if new_id:
                    logs = logs or self._tail(new_id, secrets)
                    self.client.api.remove_container(new_id, force=True)
                if previous is not None:
                    self._restore(previous, spec, deploy)
                    reason += f"; rolled back to the previous container {previous.short_id}"
            except Exception as cleanup:
                if not engine_unreachable(cleanup):
                    raise
                kept = (f"the previous container {previous.short_id} is kept, stopped, as "
                        f"{spec.container_name}-prodg-previous-{previous.short_id}" if previous is not None
                        else "nothing was running before")
                reason += (f"; the rollback could not finish because {self.unreachable(cleanup)}: {kept}, and the "
                           f"next apply of {service} restores or replaces it")
            raise ApplyFailed(service, reason, logs) from None
        if previous is not None:
            previous.remove(force=True)
        kind = "created" if action.kind == CREATE else "recreated"
        return ApplyResult(service, kind, new_id, image_id, image, action.markdown(), want_hash)

    def _trial(self, spec: ServiceSpec, state: DesiredState, image: str, secrets: Mapping[str, str],
               spec_hash: str, commit: str, timeout: float, log: Callable[[str], None]) -> None:
        name = f"{spec.container_name}-prodg-candidate"
        self._remove_stray(name)
        cid = self._create(spec, state, image, secrets, spec_hash, commit, name=name, trial=True)
        try:
            self.client.api.start(cid)
            log(f"{spec.name}: trial container {cid[:12]} started beside the serving one; waiting for health")
            self._wait_healthy(spec, cid, timeout, secrets)
        except Exception as exc:
            if isinstance(exc, ApplyFailed):
                reason, logs = exc.reason, exc.logs
            elif engine_unreachable(exc):
                reason, logs = (f"{self.unreachable(exc)} while the trial container was proving itself (it is "
                                f"removed by the next apply)"), ""
            else:
                reason, logs = redact(str(exc), secrets), ""
            try:
                logs = logs or self._tail(cid, secrets)
            except Exception:  # the Engine is gone: there is no log to fetch
                pass
            raise ApplyFailed(spec.name, reason + "; the previous container kept serving throughout", logs) from None
        finally:
            try:
                self.client.api.remove_container(cid, force=True)
            except Exception as exc:
                if not engine_unreachable(exc):
                    raise

    def _recover_interrupted(self, spec: ServiceSpec, project: str, secrets: Mapping[str, str],
                             health_timeout: float, log: Callable[[str], None]) -> None:
        """Finish what an interrupted apply (Engine gone, prodg killed) left behind, before planning: a stray trial
        container is removed; a kept previous container is removed when the service's current container is
        healthy, else it is put back in service (and the half-started new one removed)."""
        leftovers = [c for c in self.client.containers.list(all=True, filters={"label": [
            f"{LABEL_PROJECT}={project}", f"{LABEL_SERVICE}={spec.name}"]}) if c.name != spec.container_name]
        if not leftovers:
            return
        previous = sorted((c for c in leftovers if "-prodg-previous-" in c.name),
                          key=lambda c: c.attrs.get("Created", ""), reverse=True)
        for c in leftovers:
            if c.name.endswith("-prodg-candidate"):
                log(f"{spec.name}: removing trial container {c.short_id} left by an interrupted apply")
                c.remove(force=True)
        if not previous:
            return
        try:
            current = self.client.containers.get(spec.container_name)
        except errors.NotFound:
            current = None
        healthy = False
        if current is not None:
            try:
                self._wait_healthy(spec, current.id, health_timeout, secrets)
                healthy = True
            except ApplyFailed:
                healthy = False
        if healthy:
            log(f"{spec.name}: an interrupted apply left the previous container {previous[0].short_id}; the current "
                f"one {current.short_id} is healthy, so the previous one is removed")
            for c in previous:
                c.remove(force=True)
            return
        keep, older = previous[0], previous[1:]
        log(f"{spec.name}: an interrupted apply left the previous container {keep.short_id} stopped and "
            f"{'no current container' if current is None else f'an unhealthy current one {current.short_id}'}; "
            f"putting the previous one back in service")
        if current is not None:
            current.remove(force=True)
        self._restore(keep, spec, {"health_timeout_s": health_timeout})
        for c in older:
            c.remove(force=True)

    def _restore(self, previous, spec: ServiceSpec, deploy: Mapping) -> None:
        previous.rename(spec.container_name)
        self.client.api.update_container(previous.id, restart_policy=_restart_policy(spec.restart))
        previous.start()
        try:
            self._wait_healthy(spec, previous.id, float(deploy.get("health_timeout_s", 120)), {})
        except ApplyFailed:
            pass  # it was what ran before; the failure being reported is the new container's

    def _remove_stray(self, name: str) -> None:
        try:
            self.client.api.remove_container(name, force=True)
        except errors.NotFound:
            pass

    def _create(self, spec: ServiceSpec, state: DesiredState, image: str, secrets: Mapping[str, str],
                spec_hash: str, commit: str, name: str | None = None, trial: bool = False) -> str:
        """Create (not start) the service's container. A `trial` container publishes no ports and takes no network
        alias, so nothing is routed to it while it proves itself healthy."""
        api = self.client.api
        env = {**self.file_env(spec, strict=True), **resolve_env(spec, secrets)}
        port_bindings: dict[str, list] = {}
        for p in () if trial else spec.ports:
            port_bindings.setdefault(f"{p.container_port}/{p.protocol}", []).append((p.host_ip, p.host_port))
        binds = [f"{m.source}:{m.target}:{'ro' if m.read_only else 'rw'}" for m in spec.volumes]
        networks = list(spec.networks)
        first = networks[0] if networks else None
        host_config = api.create_host_config(
            binds=binds,
            port_bindings=port_bindings,
            restart_policy=_restart_policy(spec.restart),
            network_mode=first[0] if first else None,
        )
        networking = None
        if first:
            aliases = [] if trial else [spec.name, *first[1]]
            networking = api.create_networking_config({first[0]: api.create_endpoint_config(aliases=aliases)})
        health = None
        if spec.healthcheck:
            h = spec.healthcheck
            health = {"test": list(h.test), "interval": _ns(h.interval_s), "timeout": _ns(h.timeout_s),
                      "retries": h.retries, "start_period": _ns(h.start_period_s)}
        labels = {**dict(spec.labels), LABEL_PROJECT: state.project, LABEL_SERVICE: spec.name,
                  LABEL_SPEC_HASH: spec_hash, LABEL_COMMIT: commit}
        created = api.create_container(
            image, command=list(spec.command) if spec.command is not None else None,
            name=name or spec.container_name,
            environment=env, labels=labels, user=spec.user or None, healthcheck=health,
            ports=[] if trial else [(p.container_port, p.protocol) for p in spec.ports], host_config=host_config,
            networking_config=networking, detach=True,
        )
        cid = created["Id"]
        for net_name, more in networks[1:]:
            api.connect_container_to_network(cid, net_name, aliases=[] if trial else [spec.name, *more])
        return cid

    def _wait_healthy(self, spec: ServiceSpec, cid: str, timeout: float, secrets: Mapping[str, str]) -> None:
        """Until the healthcheck says healthy (or, without one, until the container has kept running for a few
        seconds). Exits, restarts, `unhealthy` and the timeout fail."""
        deadline = time.monotonic() + timeout
        settle = 3.0
        started = time.monotonic()
        while True:
            state = self.client.api.inspect_container(cid)["State"]
            if not state.get("Running") or state.get("Restarting"):
                raise ApplyFailed(spec.name, f"new container exited with code {state.get('ExitCode')}",
                                  self._tail(cid, secrets))
            health = (state.get("Health") or {}).get("Status")
            if spec.healthcheck is None and time.monotonic() - started >= settle:
                return
            if health == "healthy":
                return
            if health == "unhealthy":
                raise ApplyFailed(spec.name, "new container failed its healthcheck", self._tail(cid, secrets))
            if time.monotonic() > deadline:
                raise ApplyFailed(spec.name, f"new container not healthy after {timeout:.0f}s",
                                  self._tail(cid, secrets))
            time.sleep(0.25)

    def _tail(self, cid: str, secrets: Mapping[str, str], lines: int = 20) -> str:
        try:
            text = self.client.api.logs(cid, tail=lines).decode("utf-8", "replace")
        except (errors.NotFound, errors.APIError):
            return ""
        return redact(text, secrets)

    def remove_service(self, project: str, service: str) -> Optional[str]:
        for c in self.client.containers.list(all=True, filters={"label": [f"{LABEL_PROJECT}={project}",
                                                                           f"{LABEL_SERVICE}={service}"]}):
            c.remove(force=True)
            return c.id
        return None


def _restart_policy(restart: str) -> dict:
    name, _, count = restart.partition(":")
    policy = {"Name": "" if name == "no" else name}
    if count:
        policy["MaximumRetryCount"] = int(count)
    return policy


__all__ = ["ApplyFailed", "ApplyResult", "DockerEngine", "ImageUnavailable"]
