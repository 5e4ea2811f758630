"""Network layer: the Docker network the services share (the Headscale container is a service asset of this group)."""


import dagster as dg

from ..contract import (
    HOST_ASSET,
    LABEL_PROJECT,
    LABEL_SERVICE,
    NETWORK_ASSET,
    RETIRED_ASSET,
)
from ..engine.client import DockerEngine
from ..gitops.repo import ConfigRepo
from ..gitops.run import state_for_run


@dg.asset(name=NETWORK_ASSET, group_name="network", deps=[HOST_ASSET], kinds={"docker"})
def docker_network(context: dg.AssetExecutionContext, docker: DockerEngine, repo: ConfigRepo) -> dg.MaterializeResult:
    """The mainframe's Docker networks (seed: `compose_prodg-internal`, bridge, 172.19.0.0/16), created with their
    declared subnet when missing. An existing network is never recreated under running containers."""
    state, commit = state_for_run(context, repo)
    actions = {}
    for net in state.networks.values():
        action, net_id = docker.ensure_network(net, state.project)
        actions[net.name] = action
        context.log.info(f"network {net.name}: {action} ({net_id[:12]})")
    return dg.MaterializeResult(metadata={
        "commit": commit,
        "action": "created" if "created" in actions.values() else "unchanged",
        "networks": dg.MetadataValue.json(actions),
    })


@dg.asset_check(asset=NETWORK_ASSET, name="network_matches", blocking=True)
def network_matches(context: dg.AssetCheckExecutionContext, docker: DockerEngine,
                    repo: ConfigRepo) -> dg.AssetCheckResult:
    """Each declared network exists with its declared subnet, and each managed container is attached to the
    networks its service declares, and to no other."""
    state, _ = state_for_run(context, repo)
    problems = []
    for net in state.networks.values():
        facts = docker.network_facts(net.name)
        if facts is None:
            problems.append(f"network {net.name} does not exist")
            continue
        subnets = [c.get("Subnet") for c in (facts.get("IPAM") or {}).get("Config") or []]
        if net.subnet and net.subnet not in subnets:
            problems.append(f"network {net.name} has subnet {', '.join(filter(None, subnets)) or 'none'}, "
                            f"expected {net.subnet}")
    for c in docker.client.containers.list(filters={"label": f"{LABEL_PROJECT}={state.project}"}):
        service = c.labels.get(LABEL_SERVICE)
        if service not in state.services:
            continue
        want = {n for n, _ in state.services[service].networks}
        have = set((c.attrs.get("NetworkSettings") or {}).get("Networks") or {})
        if want != have:
            problems.append(f"{c.name} is on {', '.join(sorted(have)) or 'no network'}; "
                            f"declared: {', '.join(sorted(want))}")
    return dg.AssetCheckResult(passed=not problems, metadata={
        "problems": dg.MetadataValue.md("\n".join(f"- {p}" for p in problems) or "none")})


@dg.asset(name=RETIRED_ASSET, group_name="network", deps=[NETWORK_ASSET], kinds={"docker"})
def retired_services(context: dg.AssetExecutionContext, docker: DockerEngine, repo: ConfigRepo) -> dg.MaterializeResult:
    """Managed containers whose service has left the Compose file. With `deploy.prune: true` in prodg.yaml they are
    removed; otherwise they are only reported (and the `no_retired_services` check fails until someone decides)."""
    state, commit = state_for_run(context, repo)
    prune = state.settings.deploy.prune
    live = docker.live(state.project)
    retired = sorted(set(live) - set(state.services))
    removed = []
    for service in retired if prune else []:
        docker.remove_service(state.project, service)
        removed.append(service)
        context.log.info(f"{service}: removed (left the spec; deploy.prune is on)")
    return dg.MaterializeResult(metadata={
        "commit": commit, "retired": ", ".join(retired) or "none", "removed": ", ".join(removed) or "none",
        "action": "removed" if removed else "unchanged"})


@dg.asset_check(asset=RETIRED_ASSET, name="no_retired_services", blocking=False)
def no_retired_services(context: dg.AssetCheckExecutionContext, docker: DockerEngine,
                        repo: ConfigRepo) -> dg.AssetCheckResult:
    """No managed container runs for a service that left the spec."""
    state, _ = state_for_run(context, repo)
    retired = sorted(set(docker.live(state.project)) - set(state.services))
    return dg.AssetCheckResult(passed=not retired, metadata={"retired": ", ".join(retired) or "none"})
