"""The git sensor: a push deploys exactly what its commits changed, tagged with the commit."""

from dataclasses import dataclass
from typing import Mapping

import dagster as dg

from ..contract import COMMIT_TAG, COVERS_TAG, REASON_TAG, SENSOR_NAME
from ..desired import ConfigInvalid
from .impact import impacted_assets
from .reload import graph_fingerprint, request_reload
from .remainder import remainder_request
from .repo import ConfigRepo, GitError


@dataclass(frozen=True)
class LoadedGraph:
    """What the code location's definitions were built from: the commit ("" for a work tree), the fingerprint of
    its desired state (gitops.reload), the environment its variables came from, and where to ask for a reload."""

    commit: str
    fingerprint: str
    environ: Mapping[str, str]
    dagster_url: str = ""


def read_cursor(cursor: str | None) -> tuple[str, int]:
    """(last requested commit, deploy decisions so far) from the sensor's cursor `<sha>:<n>` (or a bare `<sha>`)."""
    commit, _, count = (cursor or "").partition(":")
    return commit, int(count) if count.isdigit() else 0


def build_git_sensor(target: dg.AssetSelection, interval_s: int = 30,
                     loaded: LoadedGraph | None = None) -> dg.SensorDefinition:
    @dg.sensor(name=SENSOR_NAME, target=target, minimum_interval_seconds=interval_s,
               default_status=dg.DefaultSensorStatus.RUNNING)
    def config_repo_sensor(context: dg.SensorEvaluationContext, repo: ConfigRepo):
        """Watches the config repo's tracked branch. For a new head commit it validates the config (an invalid commit
        is skipped with its located errors and deploys nothing), diffs it against the last deployed commit, and
        requests one run of the affected assets and everything downstream of them, tagged `prodg/commit` = the
        commit. Its run_key is unique per decision (`<sha>:<n>`), not the SHA alone: a branch reset to a commit that
        was deployed before deploys it again. A rewritten history (the deployed commit is no longer an ancestor)
        triggers a full reconcile. The cursor (`<last requested commit>:<decisions>`) moves only when a decision is
        taken. When the head changes what the definitions are drawn from (services, their dependencies, prodg.yaml
        settings), the code location is reloaded first (gitops.reload) and the next tick, in the reloaded process,
        deploys; the cursor waits."""
        try:
            repo.fetch()
            head = repo.head()
        except GitError as exc:
            raise dg.Failure(f"config repo unreadable: {exc}") from None  # the cursor stays where it was
        last, decisions = read_cursor(context.cursor)
        if head == last:
            graph = context.repository_def.asset_graph
            rest = remainder_request(context.instance, f"{head}:{decisions}", target.resolve(graph))
            if rest is not None:
                context.log.info(f"{head[:12]}: {rest.tags[REASON_TAG]} -> "
                                 f"{', '.join(k.to_user_string() for k in rest.asset_selection)}")
                return rest
            return dg.SkipReason(f"no new commit on {repo.branch} (deployed: {head[:12]})")
        try:
            new = repo.desired_state(head)
        except ConfigInvalid as exc:
            errors = "\n".join(str(e) for e in exc.errors[:20])
            return dg.SkipReason(f"commit {head[:12]} does not validate; nothing deployed:\n{errors}")
        old, covers, why = None, [head], "first deploy"
        if last and repo.has_commit(last) and repo.is_ancestor(last, head):
            covers = repo.commits_between(last, head)
            try:
                old = repo.desired_state(last)
                why = ""
            except ConfigInvalid:
                why = "previous commit unreadable"
        elif last:
            why = f"history rewritten ({last[:12]} is not an ancestor of {head[:12]})"
        if loaded is not None and loaded.commit != head:
            wanted = graph_fingerprint(repo.desired_state(head, environ=loaded.environ))
            if wanted != loaded.fingerprint:
                location = context.code_location_origin.location_name if context.code_location_origin else "prodg"
                done = request_reload(loaded.dagster_url, location) if loaded.dagster_url else \
                    "PRODG_DAGSTER_URL is not set: reload the code location (Deployment → Reload) to go on"
                return dg.SkipReason(f"commit {head[:12]} changes the asset graph or the settings it is built from "
                                     f"(loaded from {loaded.commit[:12] or 'the work tree'}); {done}; the next tick "
                                     f"after the reload deploys it")
        assets, reasons = impacted_assets(old, new)
        if why:
            reasons.insert(0, why)
        if not assets:
            context.update_cursor(f"{head}:{decisions}")
            return dg.SkipReason(f"commit {head[:12]} changes no asset ({len(covers)} commit(s))")
        graph = context.repository_def.asset_graph
        known = {k for k in graph.get_all_asset_keys()}
        keys = {dg.AssetKey(a) for a in assets} & known
        selection = dg.AssetSelection.assets(*keys).downstream() & target
        selected = sorted(selection.resolve(graph), key=lambda k: k.to_user_string())
        if not selected:  # an empty selection would be read as "the whole job"
            context.update_cursor(f"{head}:{decisions}")
            return dg.SkipReason(f"commit {head[:12]}: {'; '.join(reasons)}; no deploy asset to run")
        context.log.info(f"{head[:12]}: {'; '.join(reasons)} -> {', '.join(k.to_user_string() for k in selected)}")
        context.update_cursor(f"{head}:{decisions + 1}")
        return dg.RunRequest(
            run_key=f"{head}:{decisions + 1}",
            asset_selection=selected,
            tags={COMMIT_TAG: head, COVERS_TAG: ",".join(c[:12] for c in covers[:50]),
                  REASON_TAG: "; ".join(reasons)[:1000]},
        )

    return config_repo_sensor
