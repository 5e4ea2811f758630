"""One asset per Compose service: materialising it brings that container to the desired state of the run's commit."""


import dagster as dg

from ..contract import (
    COVERS_TAG,
    EXPOSURE,
    HEALTHY,
    IN_SYNC,
    KIND_TAG,
    NETWORK_ASSET,
    ROTATED_TAG,
    SECRETS_ASSET,
    SELF_HEAL_KIND,
    SERVICE_TAG,
    service_pool,
)
from ..desired import DesiredState, ServiceSpec, asset_name
from ..engine.client import DockerEngine
from ..engine.failures import ApplyFailed
from ..engine.locks import service_lock
from ..engine.plan import UNCHANGED
from ..gitops.repo import ConfigRepo
from ..gitops.run import forced, state_for_run
from ..secret_source import SecretSource, SecretSourceUnavailable, redact
from .host import exposure_result


class DeployConfig(dg.Config):
    """Run config of every service asset."""

    dry_run: bool = False  # only record the plan; change nothing live


def service_deps(state: DesiredState, spec: ServiceSpec) -> list[dg.AssetKey]:
    deps = [dg.AssetKey(asset_name(d)) for d in state.upstream(spec.name)]
    deps.append(dg.AssetKey(NETWORK_ASSET))
    if spec.secrets_used:
        deps.append(dg.AssetKey(SECRETS_ASSET))
    return deps


def _describe(spec: ServiceSpec) -> str:
    ports = ", ".join(str(p) for p in spec.ports) or "none published"
    public = ", ".join(spec.public_domains) or "none"
    source = f"built from `{spec.build.context}` at the commit" if spec.build else f"image `{spec.image}`"
    return (f"The `{spec.name}` container ({source}). Materialising applies the Compose service at the run's "
            f"commit: created if missing, recreated only when its spec or live state differs, rolled back if the new "
            f"container fails its healthcheck. Ports: {ports}. Public domains: {public}. Trust tier {spec.trust_tier}.")


def newer_live_commit(context, docker: DockerEngine, repo: ConfigRepo, state: DesiredState, spec: ServiceSpec,
                      commit: str) -> str:
    """The commit of the service's live container when it is a strict descendant of `commit` that the tracked
    branch still contains — i.e. a newer deploy already applied this service and this (older) run must not undo it;
    "" otherwise: always for a forced run (the break-glass rollback), and when the branch was reset to before the
    live commit (the GitOps rollback: the branch is the truth)."""
    if not commit or forced(context) or not repo.is_git():
        return ""
    live = docker.live_commit(state.project, spec)
    if not live or live == commit or not repo.is_ancestor(commit, live):
        return ""
    return live if repo.is_ancestor(live, repo.head()) else ""


def build_service_asset(state: DesiredState, spec: ServiceSpec) -> dg.AssetsDefinition:
    @dg.asset(
        name=spec.asset,
        group_name=spec.layer,
        deps=service_deps(state, spec),
        description=_describe(spec),
        kinds={"docker"},
        pool=service_pool(spec.asset),
        tags={SERVICE_TAG: spec.name},
    )
    def _service(context: dg.AssetExecutionContext, config: DeployConfig, docker: DockerEngine,
                 repo: ConfigRepo, secrets: SecretSource) -> dg.MaterializeResult:
        current, commit = state_for_run(context, repo, materialise=not config.dry_run)
        if spec.name not in current.services:
            raise dg.Failure(f"service {spec.name!r} is not in the config at {commit[:12] or 'the working tree'}; "
                             f"reload the code location to drop its asset")
        used = current.services[spec.name].secrets_used
        try:
            values = secrets.values() if used else {}
        except SecretSourceUnavailable as exc:
            raise dg.Failure(f"{spec.name}: needs {', '.join(sorted(used))} from the secrets source, which could not "
                             f"be read — {exc}; nothing was changed, the running container keeps running") from None
        missing = sorted(used - set(values))
        if missing:
            raise dg.Failure(f"{spec.name}: secrets {', '.join(missing)} are missing from the secrets source")
        if config.dry_run:
            desired, action = docker.plan_service(current, values, commit, spec.name)
            return dg.MaterializeResult(metadata={
                "commit": commit, "dry_run": True, "action": f"planned:{action.kind}",
                "spec_hash": desired.spec_hash,
                "plan": dg.MetadataValue.md(action.markdown()),
            })
        # one run at a time decides about and applies this service, whatever the storage (engine/locks.py)
        with service_lock(repo.deployed_dir, current.project, spec.name, context.log.info):
            newer = newer_live_commit(context, docker, repo, current, spec, commit)
            if newer:
                context.log.warning(f"{spec.name}: superseded — commit {newer[:12]} is live, and {commit[:12]} is one "
                                    f"of its ancestors; nothing applied (`prodg deploy --commit` forces an older one)")
                return dg.MaterializeResult(metadata={
                    "commit": commit, "action": "superseded", "live_commit": newer,
                    "commits_covered": context.run.tags.get(COVERS_TAG, commit[:12]),
                    "diff": dg.MetadataValue.md(f"superseded by the live commit `{newer[:12]}`"),
                })
            try:
                result = docker.apply_service(current, spec.name, values, commit,
                                              build_root=repo.build_root(current.services[spec.name], commit),
                                              log=context.log.info,
                                              refresh=context.run.tags.get(KIND_TAG) == SELF_HEAL_KIND)
            except ApplyFailed as exc:
                context.log.error(str(exc))
                raise dg.Failure(description=f"{exc.service}: {exc.reason}", metadata={
                    "commit": commit, "action": "rolled_back" if "rolled back" in exc.reason else "failed",
                    "last_logs": dg.MetadataValue.md(f"```\n{exc.logs}\n```"),
                }) from None
        context.log.info(f"{spec.name}: {result.action} ({result.container_id[:12]})")
        for tree in repo.remove_unused_trees(docker.bind_sources()):
            context.log.info(f"removed the config tree {tree}: no container mounts it")
        return dg.MaterializeResult(metadata={
            "commit": commit,
            "commits_covered": context.run.tags.get(COVERS_TAG, commit[:12]),
            "spec_hash": result.spec_hash,
            "action": result.action,
            "container_id": result.container_id,
            "image_id": result.image_id,
            "image": result.image,
            "image_digest": result.image_digest or "none (built or local, never pulled)",
            "diff": dg.MetadataValue.md(result.diff_markdown if result.action != UNCHANGED else "no change"),
            # a rotation run: which of this service's secrets changed at the source (names only)
            **({"rotated_secrets": ", ".join(sorted(set(context.run.tags[ROTATED_TAG].split(","))
                                                   & current.services[spec.name].secrets_used))}
               if ROTATED_TAG in context.run.tags else {}),
        })

    return _service


def build_in_sync_check(spec: ServiceSpec) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=spec.asset, name=IN_SYNC, blocking=False, pool=service_pool(spec.asset))
    def _in_sync(context: dg.AssetCheckExecutionContext, docker: DockerEngine, repo: ConfigRepo,
                 secrets: SecretSource) -> dg.AssetCheckResult:
        """The live container matches the desired state (no drift): same spec hash, image, command, environment,
        ports, mounts, networks, restart policy, user, healthcheck, and running. Fails with the fields that differ."""
        current, commit = state_for_run(context, repo)
        with service_lock(repo.deployed_dir, current.project, spec.name, context.log.info, shared=True):
            newer = newer_live_commit(context, docker, repo, current, spec, commit)
            if newer:  # this run was superseded: what must match is the newer commit that is live
                current, commit = repo.desired_state(newer), newer
            _, action = docker.plan_service(current, secrets.values(), commit, spec.name)
        return dg.AssetCheckResult(passed=action.kind == UNCHANGED, metadata={
            "action_needed": action.kind,
            "drift": dg.MetadataValue.md(action.markdown()),
            "fields": ", ".join(f for f, _, _ in action.diff) or "none"})

    return _in_sync


def build_exposure_check(spec: ServiceSpec) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=spec.asset, name=EXPOSURE, blocking=False)
    def _exposure(context: dg.AssetCheckExecutionContext, docker: DockerEngine,
                  repo: ConfigRepo) -> dg.AssetCheckResult:
        """After this service's deploy: every port the project publishes on 0.0.0.0 or :: is public on purpose (the
        host baseline's `exposure`, run with every deploy so a wildcard publication shows the moment it appears)."""
        state, _ = state_for_run(context, repo)
        return exposure_result(docker, state)

    return _exposure


def build_healthy_check(state: DesiredState, spec: ServiceSpec) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=spec.asset, name=HEALTHY, blocking=False, pool=service_pool(spec.asset))
    def _healthy(context: dg.AssetCheckExecutionContext, docker: DockerEngine, repo: ConfigRepo,
                 secrets: SecretSource) -> dg.AssetCheckResult:
        """The service's container is running, not restarting, and not unhealthy by its own healthcheck (one that
        is still starting passes). Runs every watch.every.health without deploying anything; waits while a deploy
        swaps the container."""
        with service_lock(repo.deployed_dir, state.project, spec.name, context.log.info, shared=True):
            problems, status = docker.container_health(state.project, spec)
        shown = redact("\n".join(f"- {p}" for p in problems), secrets.values()) if problems else "none"
        return dg.AssetCheckResult(passed=not problems, metadata={
            "status": status, "problems": dg.MetadataValue.md(shown)})

    return _healthy
