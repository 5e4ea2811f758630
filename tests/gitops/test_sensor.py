"""The git sensor against real repos (a bare remote, an operator's clone, prodg's mirror) and the real Engine."""

import os
import subprocess
import uuid

import dagster as dg
import pytest

from prodg_assets.contract import SENSOR_NAME
from prodg_assets.gitops.repo import ConfigRepo
from tests.conftest import Testbed, git, make_testbed

pytestmark = pytest.mark.docker


class Remote:
    """An operator's clone of the bare config repo that prodg follows."""

    def __init__(self, bed: Testbed, tmp: str):
        self.bed = bed
        self.bare = os.path.join(tmp, "origin.git")
        self.clone = os.path.join(tmp, "operator")
        subprocess.run(["git", "clone", "-q", "--bare", bed.repo, self.bare], check=True)
        subprocess.run(["git", "clone", "-q", self.bare, self.clone], check=True)
        git(self.clone, "config", "user.email", "ops@prodg.test")
        git(self.clone, "config", "user.name", "operator")
        bed.env.update({"PRODG_REPO": os.path.join(tmp, "mirror"), "PRODG_REPO_URL": self.bare})
        os.environ.update(bed.env)

    def edit(self, rel: str, old: str, new: str) -> None:
        path = os.path.join(self.clone, "config", rel)
        text = open(path).read()
        assert old in text
        with open(path, "w") as fh:
            fh.write(text.replace(old, new, 1))

    def push(self, message: str, force: bool = False) -> str:
        git(self.clone, "commit", "-qam", message)
        git(self.clone, "push", "-q", *(["--force"] if force else []), "origin", "HEAD:main")
        return git(self.clone, "rev-parse", "HEAD")


def evaluate(bed: Testbed, instance, cursor: str | None):
    defs = bed.defs()
    sensor = defs.resolve_sensor_def(SENSOR_NAME)
    repo_def = defs.get_repository_def()
    with dg.build_sensor_context(instance=instance, cursor=cursor, repository_def=repo_def,
                                 resources={"repo": defs.resources["repo"]}) as ctx:
        result = sensor.evaluate_tick(ctx)
        return result, ctx.cursor


def launch(bed: Testbed, instance, request: dg.RunRequest) -> dg.ExecuteInProcessResult:
    """Execute the run the sensor requested: its selection, its tags."""
    job = bed.defs().resolve_implicit_global_asset_job_def().get_subset(asset_selection=set(request.asset_selection))
    return job.execute_in_process(instance=instance, tags=request.tags)


@pytest.fixture(scope="module")
def remote(tmp_path_factory, docker_client):
    tmp = str(tmp_path_factory.mktemp("gitops"))
    bed = make_testbed(tmp, docker_client, f"prodgs{uuid.uuid4().hex[:8]}")
    old_env = dict(os.environ)
    try:
        bed.cleanup()
        remote = Remote(bed, tmp)
        # Every test starts from the stack deployed at the remote's first commit, whatever ran before it.
        deployed = bed.materialize()
        assert deployed.success, "the test stack did not deploy"
        yield remote
    finally:
        bed.cleanup()
        os.environ.clear()
        os.environ.update(old_env)


def keys(request: dg.RunRequest) -> set[str]:
    return {k.to_user_string() for k in request.asset_selection}


def test_first_tick_reconciles_everything_then_a_redis_push_deploys_redis_and_its_dependents(remote):
    bed = remote.bed
    with dg.instance_for_test() as instance:
        first, cursor = evaluate(bed, instance, None)
        assert len(first.run_requests) == 1
        head = git(remote.clone, "rev-parse", "HEAD")
        req = first.run_requests[0]
        assert req.run_key == f"{head}:1" and req.tags["prodg/commit"] == head
        assert {"postgres", "redis", "hermes_api", "caddy", "prometheus", "node_exporter"} <= keys(req)
        assert cursor == f"{head}:1"
        assert launch(bed, instance, req).success
        before = {s: c.id for s, c in bed.containers().items()}

        again, cursor2 = evaluate(bed, instance, cursor)
        assert not again.run_requests and "no new commit" in again.skip_message
        assert cursor2 == cursor

        remote.edit("compose/docker-compose.yml", "      REDIS_PASSWORD: ${REDIS_PASSWORD}\n",
                    "      REDIS_PASSWORD: ${REDIS_PASSWORD}\n      REDIS_TIMEOUT: \"300\"\n")
        sha = remote.push("redis: idle timeout")
        result, cursor3 = evaluate(bed, instance, cursor)
        (req,) = result.run_requests
        assert req.run_key == f"{sha}:2" and req.tags["prodg/commit"] == sha
        # Redis and what depends on it — nothing else.
        assert keys(req) == {"redis", "hermes_api", "caddy", "prometheus", "tls_certificates"}
        assert cursor3 == f"{sha}:2"
        run = launch(bed, instance, req)
        assert run.success
        after = {s: c.id for s, c in bed.containers().items()}
        assert after["redis"] != before["redis"]
        assert {s: i for s, i in after.items() if s != "redis"} == {s: i for s, i in before.items() if s != "redis"}
        assert bed.containers()["redis"].labels["prodg.commit"] == sha
        # The materialisation is in the instance with the commit, for lineage.
        event = instance.get_latest_materialization_event(dg.AssetKey("redis"))
        assert event.asset_materialization.metadata["commit"].value == sha
        assert instance.get_run_by_id(run.run_id).tags["prodg/commit"] == sha


def test_invalid_push_deploys_nothing_and_names_file_and_line_then_the_fix_deploys(remote):
    bed = remote.bed
    with dg.instance_for_test() as instance:
        cursor = git(remote.clone, "rev-parse", "HEAD")
        remote.edit("compose/docker-compose.yml", "    ports: [127.0.0.1::6379]\n",
                    "    ports: [127.0.0.1::6379\n")
        bad = remote.push("broken YAML")
        result, cursor_after = evaluate(bed, instance, cursor)
        assert not result.run_requests
        msg = result.skip_message
        assert f"{bad[:12]} does not validate" in msg
        assert "compose/docker-compose.yml:" in msg and "invalid YAML" in msg
        assert cursor_after == cursor  # nothing deployed, nothing moved
        remote.edit("compose/docker-compose.yml", "    ports: [127.0.0.1::6379\n",
                    "    ports: [127.0.0.1::6379]\n")
        remote.edit("compose/docker-compose.yml", "      REDIS_PASSWORD: ${REDIS_PASSWORD}\n",
                    "      REDIS_PASSWORD: ${REDIS_PASSWORD}\n      REDIS_FIXED_WITH: \"the YAML\"\n")
        fixed = remote.push("fix YAML, and the timeout meant to go with it")
        result, cursor_after = evaluate(bed, instance, cursor)
        (req,) = result.run_requests
        assert req.run_key == f"{fixed}:1" and "redis" in keys(req)
        assert req.tags["prodg/covers"].split(",") == [fixed[:12], bad[:12]]
        assert cursor_after == f"{fixed}:1"
        assert launch(bed, instance, req).success
        assert bed.containers()["redis"].labels["prodg.commit"] == fixed


def test_several_commits_deploy_the_newest_once_and_list_what_they_cover(remote):
    bed = remote.bed
    with dg.instance_for_test() as instance:
        cursor = git(remote.clone, "rev-parse", "HEAD")
        remote.edit("compose/docker-compose.yml", "      POSTGRES_USER: postgres\n",
                    "      POSTGRES_USER: postgres\n      TZ: UTC\n")
        first = remote.push("postgres: TZ")
        remote.edit("compose/docker-compose.yml", "      TZ: UTC\n", "      TZ: Etc/UTC\n")
        second = remote.push("postgres: TZ spelled out")
        result, _ = evaluate(bed, instance, cursor)
        (req,) = result.run_requests
        assert req.run_key == f"{second}:1"
        assert req.tags["prodg/covers"].split(",") == [second[:12], first[:12]]
        assert "postgres" in keys(req) and "redis" not in keys(req)


@pytest.mark.fault(
    fault="history force-pushed away",
    happens='full reconcile of the new head, tagged "history rewritten"')
def test_force_push_triggers_a_full_reconcile(remote, measured):
    bed = remote.bed
    with dg.instance_for_test() as instance:
        base = git(remote.clone, "rev-parse", "HEAD")
        for n in (1, 2):  # two commits of its own to rewrite
            remote.edit("compose/docker-compose.yml", "      POSTGRES_USER: postgres\n",
                        f"      POSTGRES_USER: postgres\n      REWRITTEN_{n}: \"soon\"\n")
            remote.push(f"postgres: commit {n} of 2, rewritten next")
        deployed = git(remote.clone, "rev-parse", "HEAD")
        git(remote.clone, "reset", "-q", "--hard", base)
        remote.edit("compose/docker-compose.yml", "      POSTGRES_USER: postgres\n",
                    "      POSTGRES_USER: postgres\n      REWRITTEN_TZ: Europe/Berlin\n")
        rewritten = remote.push("postgres: TZ, rewritten", force=True)
        result, cursor = evaluate(bed, instance, deployed)
        # the rewritten head is what must not be lost: the commits the tick requests a run of
        measured.compare("commits", expected={rewritten}, actual={r.run_key.split(":")[0] for r in result.run_requests})
        assert len(result.run_requests) == 1, result.skip_message
        (req,) = result.run_requests
        assert req.run_key == f"{rewritten}:1"
        assert "history rewritten" in req.tags["prodg/reason"]
        assert {"postgres", "redis", "hermes_api", "caddy", "prometheus", "node_exporter"} <= keys(req)
        assert cursor == f"{rewritten}:1"
        again, _ = evaluate(bed, instance, cursor)
        assert not again.run_requests


@pytest.mark.fault(
    fault="config repo unreachable",
    happens="sensor tick fails with the fetch error (no credentials in it), cursor kept; once the remote answers "
            "again the next tick requests the commit pushed during the outage and its run deploys it")
def test_unreachable_remote_is_a_clear_sensor_error_and_keeps_the_cursor(remote, tmp_path, measured):
    """The remote cannot be reached while an operator pushes: the tick fails clearly and keeps the cursor. Once the
    remote answers again at the same URL, the next tick of the same sensor requests the commit pushed during the
    outage (nothing skipped), moves the cursor to it, and its run deploys it."""
    bed = remote.bed
    with dg.instance_for_test() as instance:
        cursor = git(remote.clone, "rev-parse", "HEAD")
        if not bed.containers():  # run on its own: the stack deployed at the cursor first, as the first test does
            first, _ = evaluate(bed, instance, None)
            assert launch(bed, instance, first.run_requests[0]).success
        remote.edit("compose/docker-compose.yml", "      REDIS_PASSWORD: ${REDIS_PASSWORD}\n",
                    "      REDIS_PASSWORD: ${REDIS_PASSWORD}\n      DURING_OUTAGE: \"1\"\n")
        pushed = remote.push("redis: a change pushed while prodg cannot reach the remote")
        defs = bed.defs()
        sensor = defs.resolve_sensor_def(SENSOR_NAME)
        repo = defs.resources["repo"]
        gone = ConfigRepo(repo_path=repo.repo_path, config_subdir=repo.config_subdir, branch=repo.branch,
                          remote_url=str(tmp_path / "nowhere.git"))
        with dg.build_sensor_context(instance=instance, cursor=cursor, repository_def=defs.get_repository_def(),
                                     resources={"repo": gone}) as ctx:
            with pytest.raises(Exception) as err:
                sensor.evaluate_tick(ctx)
            assert ctx.cursor == cursor
        assert "config repo unreadable" in str(err.value) and "nowhere.git" in str(err.value)

        # the fault removed: the remote answers at that URL again (the real one, behind it); the same tick again
        os.symlink(remote.bare, tmp_path / "nowhere.git")
        with dg.build_sensor_context(instance=instance, cursor=cursor, repository_def=defs.get_repository_def(),
                                     resources={"repo": gone}) as ctx:
            result = sensor.evaluate_tick(ctx)
            cursor_after = ctx.cursor
        # (the commit part of the cursor and of the run key: either may carry a decision count, `<sha>:<n>`)
        assert measured.retried(converged=len(result.run_requests) == 1 and cursor_after.split(":")[0] == pushed), \
            (result.skip_message, cursor_after)
        (req,) = result.run_requests
        assert req.run_key.split(":")[0] == pushed and req.tags["prodg/commit"] == pushed and "redis" in keys(req)
        assert launch(bed, instance, req).success
        deployed = {bed.containers()["redis"].labels["prodg.commit"]}
        assert measured.compare("commits", expected={pushed}, actual=deployed) == 0, deployed


@pytest.mark.fault(
    fault="a huge unrelated file in the repo (160 MB beside the config, 40 MB inside it)",
    happens="fetched, nothing deployed, cursor moves; peak RSS grows < 80 MB; the next real push deploys")
def test_a_huge_unrelated_file_deploys_nothing_and_is_never_read_into_memory(remote, measured):
    """A 160 MB file committed beside the config (and a 40 MB one inside it that no service references): the tick
    fetches it, deploys nothing for it, moves the cursor, and prodg's memory does not grow by the file's size.

    Memory is measured in fresh processes (the peak RSS of this long-lived pytest process says nothing about one
    tick): the same tick, in a new interpreter, once for a commit of small unrelated files (the baseline) and once
    for the commit of the big ones; each reports its own peak (VmHWM) before it exits."""
    import json
    import sys

    from tests.conftest import ROOT

    tick = """if True:
        import json, os, sys
        import dagster as dg
        import prodg_assets
        from prodg_assets.contract import SENSOR_NAME

        def peak_mib():
            with open("/proc/self/status") as fh:
                return next(int(line.split()[1]) // 1024 for line in fh if line.startswith("VmHWM:"))

        defs = prodg_assets.build_defs(json.loads(os.environ["PRODG_TEST_BED_ENV"]))
        sensor = defs.resolve_sensor_def(SENSOR_NAME)
        with dg.instance_for_test() as instance:
            with dg.build_sensor_context(instance=instance, cursor=sys.argv[1],
                                         repository_def=defs.get_repository_def(),
                                         resources={"repo": defs.resources["repo"]}) as ctx:
                result = sensor.evaluate_tick(ctx)
                cursor = ctx.cursor
        print(json.dumps({"run_requests": [sorted(k.to_user_string() for k in r.asset_selection)
                                           for r in result.run_requests],
                          "skip_message": result.skip_message or "", "cursor": cursor, "peak_mib": peak_mib()}))
    """

    def tick_in_a_fresh_process(cursor: str) -> dict:
        proc = subprocess.run([sys.executable, "-c", tick, cursor], cwd=ROOT, capture_output=True, text=True,
                              timeout=300, env={**os.environ, "PRODG_TEST_BED_ENV": json.dumps(bed.env)})
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def commit_files(sizes: dict[str, int], message: str) -> str:
        for rel, size in sizes.items():
            path = os.path.join(remote.clone, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as fh:
                for _ in range(size // (1 << 20)):
                    fh.write(os.urandom(1 << 20))
                fh.write(os.urandom(size % (1 << 20)))
        git(remote.clone, "add", "-A")
        return remote.push(message)

    bed = remote.bed
    with dg.instance_for_test() as instance:
        cursor = git(remote.clone, "rev-parse", "HEAD")
        small = commit_files({"footage/notes.txt": 4096, "config/archive/index.txt": 4096}, "notes, beside the config")
        baseline = tick_in_a_fresh_process(cursor)
        # (the commit part of the cursor: it may carry a decision count, `<sha>:<n>`)
        assert not baseline["run_requests"] and baseline["cursor"].split(":")[0] == small, baseline
        huge = commit_files({"footage/raw-take-01.bin": 160 << 20, "config/archive/old-slides.bin": 40 << 20},
                            "raw footage and old slides, committed by mistake")
        measured_tick = tick_in_a_fresh_process(baseline["cursor"])
        cursor_after = measured_tick["cursor"]
        grown = measured_tick["peak_mib"] - baseline["peak_mib"]
        assert not measured_tick["run_requests"], measured_tick["run_requests"]
        skip = measured_tick["skip_message"]
        assert "nothing to deploy" in skip or "no asset" in skip, skip
        assert cursor_after.split(":")[0] == huge
        assert grown < 80, f"peak RSS grew by {grown} MB evaluating a commit with a 200 MB blob " \
                           f"({baseline['peak_mib']} MB for a commit of small files, the same tick)"
        remote.edit("compose/docker-compose.yml", "      REDIS_PASSWORD: ${REDIS_PASSWORD}\n",
                    "      REDIS_PASSWORD: ${REDIS_PASSWORD}\n      AFTER_HUGE: \"1\"\n")
        sha = remote.push("redis: a real change after the big commit")
        result, cursor_after = evaluate(bed, instance, cursor_after)
        (req,) = result.run_requests
        assert req.run_key.split(":")[0] == sha and "redis" in keys(req)
        assert launch(bed, instance, req).success
        deployed = {bed.containers()["redis"].labels["prodg.commit"]}
        assert measured.compare("commits", expected={sha}, actual=deployed) == 0, deployed


def test_a_branch_reset_to_a_commit_deployed_before_deploys_it_again(remote):
    """Resetting the branch is the common GitOps rollback: the earlier commit deploys again, under a run key it has
    never had (Dagster drops a run key it has seen), tagged with its own SHA."""
    bed = remote.bed
    with dg.instance_for_test() as instance:
        remote.edit("compose/docker-compose.yml", "      REDIS_PASSWORD: ${REDIS_PASSWORD}\n",
                    "      REDIS_PASSWORD: ${REDIS_PASSWORD}\n      RESET_TARGET: \"kept\"\n")
        good = remote.push("redis: the release to come back to")
        first, cursor = evaluate(bed, instance, None)
        (deploy_good,) = first.run_requests
        assert launch(bed, instance, deploy_good).success
        remote.edit("compose/docker-compose.yml", "      RESET_TARGET: \"kept\"\n", "      RESET_TARGET: \"bad\"\n")
        bad = remote.push("redis: a release to roll back")
        result, cursor = evaluate(bed, instance, cursor)
        (deploy_bad,) = result.run_requests
        assert launch(bed, instance, deploy_bad).success
        assert bed.containers()["redis"].labels["prodg.commit"] == bad
        git(remote.clone, "reset", "-q", "--hard", good)
        git(remote.clone, "push", "-q", "--force", "origin", "HEAD:main")
        result, cursor = evaluate(bed, instance, cursor)
        (back,) = result.run_requests
        assert back.tags["prodg/commit"] == good and back.run_key.split(":")[0] == good
        assert back.run_key not in {deploy_good.run_key, deploy_bad.run_key}
        assert cursor == back.run_key
        assert launch(bed, instance, back).success
        assert bed.containers()["redis"].labels["prodg.commit"] == good
