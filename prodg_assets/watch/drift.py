"""Drift detection: every 15 minutes (prodg.yaml deploy.drift_schedule) the live host is compared with the desired
state. Drift is recorded as failing `in_sync` checks; with `deploy.self_heal: true` the drifted services are
re-applied instead.

A secret's value changed at its source while the commit did not (a rotation in Infisical, or in the env file) is not
drift but an intended change: `secret_rotation_sensor` recreates exactly the services whose containers differ from
their desired state only in the environment keys that reference those secrets — with the same health gate and
rollback as any deploy, whatever `self_heal` says. It ticks every ROTATION_POLL_S as the fallback; Infisical's signed
webhook (`prodg webhook`, path /infisical) has it evaluated at once."""

import json

import dagster as dg

from ..contract import (
    COMMIT_TAG,
    DRIFT_KIND,
    DRIFT_SCHEDULE,
    IN_SYNC,
    KIND_TAG,
    ROTATED_TAG,
    ROTATION_KIND,
    ROTATION_SENSOR,
    SELF_HEAL_KIND,
)
from ..desired import ConfigInvalid, DesiredState, sha256_hex
from ..engine.client import DockerEngine
from ..gitops.repo import ConfigRepo
from ..secret_source import SecretSource, SecretSourceUnavailable

ROTATION_POLL_S = 900


def build_drift_schedule(state: DesiredState, target: dg.AssetSelection) -> dg.ScheduleDefinition:
    cron = state.settings.deploy.drift_schedule

    @dg.schedule(name=DRIFT_SCHEDULE, cron_schedule=cron, target=target, execution_timezone="UTC",
                 default_status=dg.DefaultScheduleStatus.RUNNING)
    def drift_schedule(context: dg.ScheduleEvaluationContext, docker: DockerEngine, repo: ConfigRepo,
                       secrets: SecretSource):
        """Runs the `in_sync` checks of every service against the branch head; with self_heal, materialises the
        drifted services instead."""
        try:
            repo.fetch()
            commit = repo.head() if repo.is_git() else ""
            current = repo.desired_state(commit)
        except ConfigInvalid as exc:
            return dg.SkipReason(f"desired state does not validate: {exc.errors[0] if exc.errors else ''}")
        tags = {COMMIT_TAG: commit, KIND_TAG: DRIFT_KIND}
        if current.settings.deploy.self_heal:
            plan = docker.plan(current, secrets.values(), commit)
            drifted = [dg.AssetKey(current.services[a.service].asset) for a in plan.changes
                       if a.service in current.services]
            if not drifted:
                return dg.SkipReason("no drift")
            return dg.RunRequest(run_key=f"heal-{context.scheduled_execution_time.isoformat()}",
                                 asset_selection=drifted, tags={**tags, KIND_TAG: SELF_HEAL_KIND})
        checks = [dg.AssetCheckKey(dg.AssetKey(s.asset), IN_SYNC) for s in current.services.values()]
        return dg.RunRequest(run_key=f"drift-{context.scheduled_execution_time.isoformat()}", asset_selection=[],
                             asset_check_keys=checks, tags=tags)

    return drift_schedule


def build_rotation_sensor(target: dg.AssetSelection) -> dg.SensorDefinition:
    @dg.sensor(name=ROTATION_SENSOR, minimum_interval_seconds=ROTATION_POLL_S, target=target,
               default_status=dg.DefaultSensorStatus.RUNNING)
    def secret_rotation_sensor(context: dg.SensorEvaluationContext, docker: DockerEngine, repo: ConfigRepo,
                               secrets: SecretSource):
        """Recreates the services using a secret whose value changed at the source while the commit did not; the run
        is tagged with the secrets' names (never a value). One run per rotation: its run key is the services and the
        hashes of their new values, so a failed rotation is told once and not retried in a loop."""
        try:
            repo.fetch()
            commit = repo.head() if repo.is_git() else ""
            current = repo.desired_state(commit)
            values = secrets.values()
        except ConfigInvalid as exc:
            return dg.SkipReason(f"desired state does not validate: {exc.errors[0] if exc.errors else ''}")
        except SecretSourceUnavailable as exc:
            return dg.SkipReason(f"the secrets source could not be read: {exc}")
        rotated = docker.rotated_secrets(current, values, commit)
        if not rotated:
            return dg.SkipReason("no secret changed at its source")
        names = sorted({n for group in rotated.values() for n in group})
        key = sha256_hex(json.dumps({s: [sha256_hex(values.get(n, "")) for n in group]
                                     for s, group in sorted(rotated.items())}))[:16]
        return dg.RunRequest(run_key=f"rotation-{key}",
                             asset_selection=[dg.AssetKey(current.services[s].asset) for s in sorted(rotated)],
                             tags={COMMIT_TAG: commit, KIND_TAG: ROTATION_KIND, ROTATED_TAG: ",".join(names)})

    return secret_rotation_sensor
