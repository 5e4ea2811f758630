"""What every layer's assets share: the commit a run deploys, the desired state at it, and where a service answers."""

from __future__ import annotations

from typing import Optional

import dagster as dg

from ..engine.docker_engine import DockerEngine
from ..gitops.repo import ConfigRepo
from ..spec import DesiredState, ServiceSpec

COMMIT_TAG = "prodg/commit"


class DeployConfig(dg.Config):
    """Run config of every service asset."""

    dry_run: bool = False  # only record the plan; change nothing live


def run_commit(context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext, repo: ConfigRepo) -> str:
    """The commit this run deploys: the `prodg/commit` tag (set by the git sensor or an operator), else the tracked
    branch's head; "" when the config folder is not in git."""
    tagged = context.run.tags.get(COMMIT_TAG) if context.run else None
    if tagged:
        return tagged
    return repo.head() if repo.is_git() else ""


def state_for_run(context, repo: ConfigRepo, materialise: bool = False) -> tuple[DesiredState, str]:
    commit = run_commit(context, repo)
    return repo.desired_state(commit, materialise=materialise), commit


def endpoint(docker: DockerEngine, spec: ServiceSpec, container_port: int, protocol: str = "tcp") \
        -> Optional[tuple[str, int]]:
    """(host, port) where `container_port` of the service answers from here: its publication on the host when it
    has one (wildcard publications are reached on loopback), else — or always, when the engine's `probe_network` is
    set because prodg itself runs in a container — the container's address on its network."""
    for p in () if docker.probe_network else spec.ports:
        if p.container_port == container_port and p.protocol == protocol:
            host = "127.0.0.1" if p.host_ip in ("0.0.0.0", "127.0.0.1") else "::1" if p.host_ip == "::" \
                else p.host_ip
            return host, p.host_port
    try:
        attrs = docker.client.api.inspect_container(spec.container_name)
    except Exception:
        return None
    for name, net in (attrs.get("NetworkSettings") or {}).get("Networks", {}).items():
        if net.get("IPAddress") and docker.probe_network in ("", name):
            return net["IPAddress"], container_port
    return None
