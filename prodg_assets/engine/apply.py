"""Applying a service: create, trial, swap, rollback, and recovery of an interrupted apply — the one home of rollback.

`apply_service` brings one service to its desired state. A stateless service gets a trial container beside the one
serving; a stateful one is stopped, renamed and kept until its successor is healthy; on failure the new container is
removed and the previous one put back. Over 300 lines because these steps share their failure paths: every step's
undo is beside it.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Mapping, Optional, Protocol

from ..contract import (
    LABEL_COMMIT,
    LABEL_IMAGE_DIGEST,
    LABEL_NETWORK,
    LABEL_PROJECT,
    LABEL_SERVICE,
    LABEL_SPEC_HASH,
)
from ..desired.interpolate import resolve_env
from ..desired.model import DesiredState, NetworkSpec, ServiceSpec
from ..lazy import docker_errors as errors
from ..lazy import docker_sdk as sdk
from ..secret_source import redact
from .data_folders import prepare_data_folders
from .facts import Desired, desired_facts, file_env, live_containers, network_subnets
from .failures import ApplyFailed, engine_unreachable
from .images import image_digest, resolve_image
from .plan import CREATE, UNCHANGED, plan_service

if TYPE_CHECKING:
    import docker


class EngineAccess(Protocol):
    """What applying needs of the Engine resource (client.DockerEngine): its client, and how to word an Engine that
    does not answer."""

    @property
    def client(self) -> docker.DockerClient: ...

    registry_mirror: str

    def unreachable(self, exc: BaseException) -> str: ...


@dataclass(frozen=True)
class ApplyResult:
    service: str
    action: str  # created | recreated | unchanged | rolled_back
    container_id: str
    image_id: str
    image: str
    diff_markdown: str
    spec_hash: str
    image_digest: str = ""  # the registry digest it was pulled as ("" for a built or local image)


def _ns(seconds: float) -> int:
    return int(seconds * 1_000_000_000)


def apply_service(engine: EngineAccess, state: DesiredState, service: str, secrets: Mapping[str, str], commit: str,
                  build_root: str | None = None, log: Callable[[str], None] = lambda _: None,
                  refresh: bool = False) -> ApplyResult:
    """Bring one service to its desired state. A recreate keeps the previous container (stopped and renamed)
    until the new one is healthy; if the new one fails, it is removed, the previous one restored, and
    ApplyFailed is raised with the reason and the new container's last log lines. With `refresh` (self-heal), a tag
    whose registry digest moved is pulled whatever the pull_policy (except `never`)."""
    try:
        return _apply(engine, state, service, secrets, commit, build_root, log, refresh)
    except ApplyFailed:
        raise
    except Exception as exc:
        if engine_unreachable(exc):
            raise ApplyFailed(service, f"{engine.unreachable(exc)}; nothing is removed while it cannot be "
                                       f"reached, and a retry finishes or undoes what was begun") from None
        raise


def _apply(engine: EngineAccess, state: DesiredState, service: str, secrets: Mapping[str, str], commit: str,
           build_root: str | None, log: Callable[[str], None], refresh: bool = False) -> ApplyResult:
    spec = state.services[service]
    deploy = state.settings.deploy
    health_timeout = deploy.health_timeout_s
    _recover_interrupted(engine, spec, state.project, secrets, health_timeout, log)
    image, image_id = resolve_image(engine.client, spec, state, commit, build_root, mirror=engine.registry_mirror,
                                    refresh=refresh, log=log)
    digest = image_digest(engine.client, image_id, spec.image, engine.registry_mirror)
    files = file_env(spec, strict=True)
    want_hash = spec.spec_hash(secrets, files)
    desired = Desired(service, want_hash, desired_facts(spec, secrets, image_id, files))
    live = live_containers(engine.client, state.project, {service: {k for k, _ in spec.environment} | set(files)},
                           service=service).get(service)
    action = plan_service(desired, live)
    if action.kind == UNCHANGED:
        return ApplyResult(service, "unchanged", live.container_id, image_id, image, action.markdown(), want_hash,
                           digest)
    for net in state.networks.values():
        if any(net.name == n for n, _ in spec.networks):
            ensure_network(engine, net, state.project)
    if live is not None and live.facts.running and not any(not m.read_only for m in spec.volumes):
        # Stateless: prove the new container healthy beside the serving one (no ports, no aliases) first, so
        # a bad release never interrupts the service. Stateful services (writable mounts) cannot run twice.
        _trial(engine, spec, state, image, secrets, want_hash, commit, health_timeout, log)
    previous = None
    if live is not None:
        previous = engine.client.containers.get(live.container_id)
        log(f"{service}: stopping previous container {previous.short_id} (kept until the new one is healthy)")
        previous.stop(timeout=deploy.stop_timeout_s)
        previous.rename(f"{spec.container_name}-prodg-previous-{previous.short_id}")
        engine.client.api.update_container(previous.id, restart_policy={"Name": "no"})
    else:
        _remove_stray(engine, spec.container_name)
    new_id = None
    try:
        # after the previous container has stopped: nothing it writes on the way out stays behind a hand-over; a
        # folder that cannot be handed over puts the previous container back like any failed start
        prepare_data_folders(spec, state.settings.host.data_root, log)
        new_id = _create(engine, spec, state, image, secrets, want_hash, commit, digest=digest)
        engine.client.api.start(new_id)
        log(f"{service}: started {new_id[:12]} from {image}; waiting for health (up to {health_timeout:.0f}s)")
        _wait_healthy(engine, spec, new_id, health_timeout, secrets)
    except Exception as exc:
        reason, logs = _failure(engine, exc, secrets, "while the new container was being started")
        try:
            if new_id:
                logs = logs or _tail(engine, new_id, secrets)
                engine.client.api.remove_container(new_id, force=True)
            if previous is not None:
                _restore(engine, previous, spec, health_timeout)
                reason += f"; rolled back to the previous container {previous.short_id}"
        except Exception as cleanup:
            if not engine_unreachable(cleanup):
                raise
            kept = (f"the previous container {previous.short_id} is kept, stopped, as "
                    f"{spec.container_name}-prodg-previous-{previous.short_id}" if previous is not None
                    else "nothing was running before")
            reason += (f"; the rollback could not finish because {engine.unreachable(cleanup)}: {kept}, and the "
                       f"next apply of {service} restores or replaces it")
        raise ApplyFailed(service, reason, logs) from None
    if previous is not None:
        previous.remove(force=True)
    kind = "created" if action.kind == CREATE else "recreated"
    return ApplyResult(service, kind, new_id, image_id, image, action.markdown(), want_hash, digest)


def _failure(engine: EngineAccess, exc: BaseException, secrets: Mapping[str, str], during: str) -> tuple[str, str]:
    """(reason, last log lines) of a failed start: the apply's own, an unanswered Engine's (`during` says what was
    under way), or the exception's text with secret values redacted."""
    if isinstance(exc, ApplyFailed):
        return exc.reason, exc.logs
    if engine_unreachable(exc):
        return f"{engine.unreachable(exc)} {during}", ""
    return redact(str(exc), secrets), ""


def _trial(engine: EngineAccess, spec: ServiceSpec, state: DesiredState, image: str, secrets: Mapping[str, str],
           spec_hash: str, commit: str, timeout: float, log: Callable[[str], None]) -> None:
    name = f"{spec.container_name}-prodg-candidate"
    _remove_stray(engine, name)
    cid = _create(engine, spec, state, image, secrets, spec_hash, commit, name=name, trial=True)
    try:
        engine.client.api.start(cid)
        log(f"{spec.name}: trial container {cid[:12]} started beside the serving one; waiting for health")
        _wait_healthy(engine, spec, cid, timeout, secrets)
    except Exception as exc:
        reason, logs = _failure(engine, exc, secrets, "while the trial container was proving itself (it is removed "
                                                      "by the next apply)")
        try:
            logs = logs or _tail(engine, cid, secrets)
        except Exception:  # the Engine is gone: there is no log to fetch
            pass
        raise ApplyFailed(spec.name, reason + "; the previous container kept serving throughout", logs) from None
    finally:
        try:
            engine.client.api.remove_container(cid, force=True)
        except Exception as exc:
            if not engine_unreachable(exc):
                raise


def _recover_interrupted(engine: EngineAccess, spec: ServiceSpec, project: str, secrets: Mapping[str, str],
                         health_timeout: float, log: Callable[[str], None]) -> None:
    """Finish what an interrupted apply (Engine gone, prodg killed) left behind, before planning: a stray trial
    container is removed; a kept previous container is removed when the service's current container is
    healthy, else it is put back in service (and the half-started new one removed)."""
    leftovers = [c for c in engine.client.containers.list(all=True, filters={"label": [
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
        current = engine.client.containers.get(spec.container_name)
    except errors.NotFound:
        current = None
    healthy = False
    if current is not None:
        try:
            _wait_healthy(engine, spec, current.id, health_timeout, secrets)
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
    _restore(engine, keep, spec, health_timeout)
    for c in older:
        c.remove(force=True)


def _restore(engine: EngineAccess, previous, spec: ServiceSpec, health_timeout_s: float) -> None:
    previous.rename(spec.container_name)
    engine.client.api.update_container(previous.id, restart_policy=_restart_policy(spec.restart))
    previous.start()
    try:
        _wait_healthy(engine, spec, previous.id, health_timeout_s, {})
    except ApplyFailed:
        pass  # it was what ran before; the failure being reported is the new container's


def _remove_stray(engine: EngineAccess, name: str) -> None:
    try:
        engine.client.api.remove_container(name, force=True)
    except errors.NotFound:
        pass


def _create(engine: EngineAccess, spec: ServiceSpec, state: DesiredState, image: str, secrets: Mapping[str, str],
            spec_hash: str, commit: str, name: str | None = None, trial: bool = False, digest: str = "") -> str:
    """Create (not start) the service's container. A `trial` container publishes no ports and takes no network
    alias, so nothing is routed to it while it proves itself healthy."""
    api = engine.client.api
    env = {**file_env(spec, strict=True), **resolve_env(spec, secrets)}
    port_bindings: dict[str, list] = {}
    for p in () if trial else spec.ports:
        # host port 0: HostPort "" — the Engine picks a free port when the container starts
        port_bindings.setdefault(f"{p.container_port}/{p.protocol}", []).append(
            (p.host_ip, None if p.engine_picked else p.host_port))
    binds = [f"{m.source}:{m.target}:{'ro' if m.read_only else 'rw'}" for m in spec.volumes]
    networks = list(spec.networks)
    first = networks[0] if networks else None
    held = spec.privileges  # T1 only (desired.compose)
    host_config = api.create_host_config(
        binds=binds,
        port_bindings=port_bindings,
        restart_policy=_restart_policy(spec.restart),
        network_mode=held.network_mode or (first[0] if first else None),
        privileged=held.privileged,
        cap_add=list(held.cap_add) or None,
        pid_mode=held.pid or None,
        devices=list(held.devices) or None,
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
    if digest:  # the registry digest the image was pulled as
        labels[LABEL_IMAGE_DIGEST] = digest
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


def _wait_healthy(engine: EngineAccess, spec: ServiceSpec, cid: str, timeout: float,
                  secrets: Mapping[str, str]) -> None:
    """Until the healthcheck says healthy (or, without one, until the container has kept running for a few
    seconds). Exits, restarts, `unhealthy` and the timeout fail."""
    deadline = time.monotonic() + timeout
    settle = 3.0
    started = time.monotonic()
    while True:
        state = engine.client.api.inspect_container(cid)["State"]
        if not state.get("Running") or state.get("Restarting"):
            raise ApplyFailed(spec.name, f"new container exited with code {state.get('ExitCode')}",
                              _tail(engine, cid, secrets))
        health = (state.get("Health") or {}).get("Status")
        if spec.healthcheck is None and time.monotonic() - started >= settle:
            return
        if health == "healthy":
            return
        if health == "unhealthy":
            raise ApplyFailed(spec.name, "new container failed its healthcheck" + _probe_story(spec, state),
                              _tail(engine, cid, secrets))
        if time.monotonic() > deadline:
            raise ApplyFailed(spec.name, f"new container not healthy after {timeout:g}s (deploy.health_timeout_s)"
                                         + _probe_story(spec, state), _tail(engine, cid, secrets))
        time.sleep(0.25)


def _probe_story(spec: ServiceSpec, state: Mapping) -> str:
    """What the healthcheck's runs said, for a failed health wait: a probe that never returns is named as such (the
    Engine cuts each run off at the Compose `healthcheck.timeout`; the container's removal ends any still
    running)."""
    if spec.healthcheck is None:
        return ""
    h = spec.healthcheck
    command = " ".join(h.test[1:]) if h.test and h.test[0] in ("CMD", "CMD-SHELL") else " ".join(h.test)
    runs = (state.get("Health") or {}).get("Log") or []
    if not runs:
        return f": its healthcheck `{command[:200]}` has not returned once (each run may take up to {h.timeout_s:g}s)"
    stalled = sum(1 for run in runs if "exceeded timeout" in str(run.get("Output", "")))
    if stalled:
        return (f": its healthcheck `{command[:200]}` did not return within {h.timeout_s:g}s (healthcheck.timeout) "
                f"in {stalled} of its last {len(runs)} runs, and was cut off")
    return f": its healthcheck `{command[:200]}` exited {runs[-1].get('ExitCode')}"


def _tail(engine: EngineAccess, cid: str, secrets: Mapping[str, str], lines: int = 20) -> str:
    try:
        text = engine.client.api.logs(cid, tail=lines).decode("utf-8", "replace")
    except (errors.NotFound, errors.APIError):
        return ""
    return redact(text, secrets)


def remove_service(engine: EngineAccess, project: str, service: str) -> Optional[str]:
    for c in engine.client.containers.list(all=True, filters={"label": [f"{LABEL_PROJECT}={project}",
                                                                       f"{LABEL_SERVICE}={service}"]}):
        c.remove(force=True)
        return c.id
    return None


def ensure_network(engine: EngineAccess, net: NetworkSpec, project: str) -> tuple[str, str]:
    """(action, network id): create the network with its declared subnet, or confirm it."""
    found = engine.client.networks.list(names=[net.name])
    match = [n for n in found if n.name == net.name]
    if match:
        return "unchanged", match[0].id
    if net.external:
        raise ApplyFailed(net.key, f"external network {net.name} does not exist (it is created outside prodg)")
    ipam = None
    if net.subnet:
        wanted = ipaddress.ip_network(net.subnet, strict=False)
        clash = [f"{name} ({subnet})" for name, subnet in network_subnets(engine.client)
                 if subnet.version == wanted.version and subnet.overlaps(wanted)]
        if clash:
            raise ApplyFailed(net.key, f"network {net.name}: its subnet {net.subnet} overlaps the Engine's network "
                                       f"{', '.join(clash)}; choose another subnet or remove that network")
        types = sdk().types
        ipam = types.IPAMConfig(pool_configs=[types.IPAMPool(subnet=net.subnet)])
    created = engine.client.networks.create(net.name, driver=net.driver, ipam=ipam,
                                          labels={LABEL_PROJECT: project, LABEL_NETWORK: net.key})
    return "created", created.id


def _restart_policy(restart: str) -> dict:
    name, _, count = restart.partition(":")
    policy = {"Name": "" if name == "no" else name}
    if count:
        policy["MaximumRetryCount"] = int(count)
    return policy
