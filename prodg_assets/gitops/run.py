"""A run's commit and its desired state: what a deploy, check or backup run works from. Loaded once per run and
commit (every step of a run reads the same commit; a process runs each step of the in-process executor)."""

from __future__ import annotations

import dagster as dg

from ..contract import COMMIT_TAG, FORCE_TAG
from ..desired import DesiredState
from .repo import ConfigRepo, commit_id

_STATES: dict[tuple[str, str, str, bool], DesiredState] = {}  # (run id, repo, commit, laid out) → state


def run_commit(context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext, repo: ConfigRepo) -> str:
    """The commit this run deploys: the `prodg/commit` tag (set by the git sensor or an operator), else the tracked
    branch's head; "" when the config folder is not in git. A tag that is not a commit id fails the run (GitError)
    before git sees it."""
    tagged = context.run.tags.get(COMMIT_TAG) if context.run else None
    if tagged:
        return commit_id(tagged, f"the run's {COMMIT_TAG} tag")
    return repo.head() if repo.is_git() else ""


def forced(context) -> bool:
    """The run deploys exactly its commit, even an older one (`prodg deploy --commit`: the break-glass rollback)."""
    return bool(context.run and context.run.tags.get(FORCE_TAG) == "true")


def state_for_run(context, repo: ConfigRepo, materialise: bool = False) -> tuple[DesiredState, str]:
    """(desired state, commit) of the run; with `materialise`, the commit's config tree is laid out on disk (where
    bind mounts point) before the state is returned. Loaded once per run, commit and lay-out."""
    commit = run_commit(context, repo)
    run_id = context.run.run_id if context.run else ""
    key = (run_id, repo.path, commit, materialise)
    if not run_id or not commit or key not in _STATES:
        state = repo.desired_state(commit, materialise=materialise)
        if not run_id or not commit:
            return state, commit
        if len(_STATES) > 64:  # a long-lived process (dagster dev's code server) keeps only recent runs
            _STATES.clear()
        _STATES[key] = state
    return _STATES[key], commit
