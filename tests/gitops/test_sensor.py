"""The git sensor against real repos (a bare remote, an operator's clone, prodg's mirror) and the real Engine."""

import os
import subprocess

import dagster as dg
import pytest

from prodg_assets.gitops.repo import ConfigRepo
from prodg_assets.sensors import SENSOR_NAME
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
    bed = make_testbed(tmp, docker_client, f"prodgs{os.getpid() % 10000}")
    old_env = dict(os.environ)
    try:
        bed.cleanup()
        yield Remote(bed, tmp)
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
        assert req.run_key == head and req.tags["prodg/commit"] == head
        assert {"postgres", "redis", "hermes_api", "caddy", "prometheus", "node_exporter"} <= keys(req)
        assert cursor == head
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
        assert req.run_key == sha and req.tags["prodg/commit"] == sha
        # Redis and what depends on it — nothing else.
        assert keys(req) == {"redis", "hermes_api", "caddy", "prometheus", "tls_certificates"}
        assert cursor3 == sha
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
        remote.edit("compose/docker-compose.yml", "    ports: [127.0.0.1:26379:6379]\n",
                    "    ports: [127.0.0.1:26379:6379\n")
        bad = remote.push("broken YAML")
        result, cursor_after = evaluate(bed, instance, cursor)
        assert not result.run_requests
        msg = result.skip_message
        assert f"{bad[:12]} does not validate" in msg
        assert "compose/docker-compose.yml:" in msg and "invalid YAML" in msg
        assert cursor_after == cursor  # nothing deployed, nothing moved
        remote.edit("compose/docker-compose.yml", "    ports: [127.0.0.1:26379:6379\n",
                    "    ports: [127.0.0.1:26379:6379]\n")
        remote.edit("compose/docker-compose.yml", "      REDIS_TIMEOUT: \"300\"\n", "      REDIS_TIMEOUT: \"600\"\n")
        fixed = remote.push("fix YAML, and the timeout meant to go with it")
        result, cursor_after = evaluate(bed, instance, cursor)
        (req,) = result.run_requests
        assert req.run_key == fixed and "redis" in keys(req)
        assert req.tags["prodg/covers"].split(",") == [fixed[:12], bad[:12]]
        assert cursor_after == fixed
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
        assert req.run_key == second
        assert req.tags["prodg/covers"].split(",") == [second[:12], first[:12]]
        assert "postgres" in keys(req) and "redis" not in keys(req)


@pytest.mark.fault
def test_force_push_triggers_a_full_reconcile(remote):
    bed = remote.bed
    with dg.instance_for_test() as instance:
        deployed = git(remote.clone, "rev-parse", "HEAD")
        git(remote.clone, "reset", "-q", "--hard", "HEAD~2")
        remote.edit("compose/docker-compose.yml", "      POSTGRES_USER: postgres\n",
                    "      POSTGRES_USER: postgres\n      TZ: Europe/Berlin\n")
        rewritten = remote.push("postgres: TZ, rewritten", force=True)
        result, cursor = evaluate(bed, instance, deployed)
        (req,) = result.run_requests
        assert req.run_key == rewritten
        assert "history rewritten" in req.tags["prodg/reason"]
        assert {"postgres", "redis", "hermes_api", "caddy", "prometheus", "node_exporter"} <= keys(req)
        assert cursor == rewritten
        again, _ = evaluate(bed, instance, cursor)
        assert not again.run_requests


@pytest.mark.fault
def test_unreachable_remote_is_a_clear_sensor_error_and_keeps_the_cursor(remote, tmp_path):
    bed = remote.bed
    with dg.instance_for_test() as instance:
        cursor = git(remote.clone, "rev-parse", "HEAD")
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


@pytest.mark.fault
def test_a_huge_unrelated_file_deploys_nothing_and_is_never_read_into_memory(remote):
    """A 160 MB file committed beside the config (and a 40 MB one inside it that no service references): the tick
    fetches it, deploys nothing for it, moves the cursor, and prodg's memory does not grow by the file's size."""
    import resource

    bed = remote.bed
    with dg.instance_for_test() as instance:
        cursor = git(remote.clone, "rev-parse", "HEAD")
        for rel, mib in (("footage/raw-take-01.bin", 160), ("config/archive/old-slides.bin", 40)):
            path = os.path.join(remote.clone, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as fh:
                for _ in range(mib):
                    fh.write(os.urandom(1 << 20))
        git(remote.clone, "add", "-A")
        huge = remote.push("raw footage and old slides, committed by mistake")
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
        result, cursor_after = evaluate(bed, instance, cursor)
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024 - before
        assert not result.run_requests, [keys(r) for r in result.run_requests]
        assert "nothing to deploy" in result.skip_message or "no asset" in result.skip_message, result.skip_message
        assert cursor_after == huge
        assert grown < 80, f"peak RSS grew by {grown} MB evaluating a commit with a 200 MB blob"
        remote.edit("compose/docker-compose.yml", "      REDIS_PASSWORD: ${REDIS_PASSWORD}\n",
                    "      REDIS_PASSWORD: ${REDIS_PASSWORD}\n      AFTER_HUGE: \"1\"\n")
        sha = remote.push("redis: a real change after the big commit")
        result, cursor_after = evaluate(bed, instance, cursor_after)
        (req,) = result.run_requests
        assert req.run_key == sha and "redis" in keys(req)
        assert launch(bed, instance, req).success
        assert bed.containers()["redis"].labels["prodg.commit"] == sha
