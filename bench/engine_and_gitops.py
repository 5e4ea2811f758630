"""Engine and GitOps figures: no-op reconcile of the test stack, plan for 100 synthetic services, code location load
beside `import dagster`, and sensor evaluation on a 5,000-commit repo with one new commit.

Prints a table and appends to bench/RESULTS.md. Measures; never asserts.
"""

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import dagster as dg  # noqa: E402

import docker  # noqa: E402
from bench.common import append_result, machine  # noqa: E402
from tests.conftest import git, init_repo, make_testbed  # noqa: E402
from tests.spec.conftest import BUNDLED_ENV  # noqa: E402


def wall(cmd: list[str], runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def noop_reconcile(tmp: str) -> tuple[float, int]:
    from prodg_assets import build_resources
    from prodg_assets.gitops.repo import ConfigRepo
    from prodg_assets.settings import EnvSettings

    client = docker.from_env()
    bed = make_testbed(os.path.join(tmp, "noop"), client, f"prodgn{os.getpid() % 10000}")
    os.environ.update(bed.env)
    try:
        bed.cleanup()
        assert bed.materialize().success
        sha = bed.commits[-1]
        repo = ConfigRepo(repo_path=bed.repo, deploy_root=bed.env["PRODG_DEPLOY_ROOT"])
        state = repo.desired_state(sha, materialise=True)
        resources = build_resources(state, EnvSettings.from_env(os.environ))
        engine, secrets = resources["docker"], resources["secrets"].values()
        before = {s: c.id for s, c in bed.containers().items()}
        t0 = time.perf_counter()
        for service in state.services:
            engine.apply_service(state, service, secrets, sha, build_root=repo.build_root(state.services[service], sha))
        elapsed = time.perf_counter() - t0
        after = {s: c.id for s, c in bed.containers().items()}
        return elapsed, sum(before[s] != after.get(s) for s in before)
    finally:
        bed.cleanup()


def plan_100() -> tuple[float, float]:
    from prodg_assets.desired import DirTree, load_desired_state
    from prodg_assets.engine.facts import desired_facts
    from prodg_assets.engine.plan import Desired, Live, plan

    tmp = tempfile.mkdtemp()
    try:
        os.makedirs(os.path.join(tmp, "compose"))
        with open(os.path.join(tmp, "prodg.yaml"), "w") as fh:
            fh.write("host: {hostname: h, os: Debian, min_free_disk_gb: 1, public_ports: []}\n"
                     "secrets: {source: env_file, required: {PW: {used_by: []}}}\n")
        with open(os.path.join(tmp, "compose", "docker-compose.yml"), "w") as fh:
            fh.write("name: synth\nnetworks: {net: {}}\nservices:\n")
            for i in range(100):
                fh.write(f"  svc{i}:\n    image: img{i}:1\n    environment: {{A: '{i}', PW: '${{PW}}'}}\n"
                         f"    ports: ['127.0.0.1:{20000 + i}:80']\n    restart: unless-stopped\n"
                         f"    healthcheck: {{test: [CMD, 'true'], interval: 5s}}\n"
                         f"    x-prodg: {{layer: hermes}}\n")
        t0 = time.perf_counter()
        state = load_desired_state(DirTree(tmp), {})
        load = time.perf_counter() - t0
        secrets = {"PW": "x"}
        t0 = time.perf_counter()
        desired = {n: Desired(n, s.spec_hash(secrets), desired_facts(s, secrets, f"sha256:{n}"))
                   for n, s in state.services.items()}
        live = {n: Live(n, f"id{n}", n, d.spec_hash if int(n[3:]) % 10 else "old", "c", d.facts)
                for n, d in desired.items()}
        result = plan(desired, live)
        elapsed = time.perf_counter() - t0
        assert len(result.changes) == 10
        return load, elapsed
    finally:
        shutil.rmtree(tmp)


def sensor_5000(tmp: str) -> float:
    import prodg_assets
    from prodg_assets.contract import SENSOR_NAME

    repo = os.path.join(tmp, "history")
    shutil.copytree(os.path.join(ROOT, "config"), os.path.join(repo, "config"))
    init_repo(repo, "base")
    # 5,000 commits touching a notes file, through fast-import (seconds, not minutes)
    importer = ["feature done"]
    parent = git(repo, "rev-parse", "HEAD")
    for i in range(5000):
        msg = f"note {i}"
        data = f"{i}\n"
        importer += ["commit refs/heads/main", "committer b <b@prodg.test> 1700000000 +0000",
                     f"data {len(msg)}", msg, *([f"from {parent}"] if i == 0 else []),
                     "M 100644 inline notes.txt", f"data {len(data)}", data.rstrip("\n"), ""]
    importer.append("done")
    subprocess.run(["git", "-C", repo, "fast-import", "--quiet"], input="\n".join(importer) + "\n", text=True,
                   check=True)
    git(repo, "reset", "-q", "--hard", "main")
    cursor = git(repo, "rev-parse", "HEAD")
    path = os.path.join(repo, "config", "compose", "docker-compose.yml")
    text = open(path).read().replace("      REDIS_PASSWORD: ${REDIS_PASSWORD}\n",
                                     "      REDIS_PASSWORD: ${REDIS_PASSWORD}\n      TZ: UTC\n", 1)
    open(path, "w").write(text)
    git(repo, "commit", "-qam", "redis: TZ")
    defs = prodg_assets.build_defs({"PRODG_REPO": repo, "PATH": os.environ["PATH"], **BUNDLED_ENV})
    sensor = defs.resolve_sensor_def(SENSOR_NAME)
    count = int(git(repo, "rev-list", "--count", "HEAD"))
    with dg.instance_for_test() as instance:
        times = []
        for _ in range(3):
            with dg.build_sensor_context(instance=instance, cursor=cursor, repository_def=defs.get_repository_def(),
                                         resources={"repo": defs.resources["repo"]}) as ctx:
                t0 = time.perf_counter()
                result = sensor.evaluate_tick(ctx)
                times.append(time.perf_counter() - t0)
            assert len(result.run_requests) == 1
    print(f"  sensor repo: {count} commits")
    return statistics.median(times)


def main() -> None:
    tmp = tempfile.mkdtemp(prefix="prodg-bench-")
    try:
        py = os.path.join(ROOT, ".venv", "bin", "python")
        t_dagster = wall([py, "-c", "import dagster"])
        t_defs = wall([py, "-c", "import definitions"])
        noop_s, recreated = noop_reconcile(tmp)
        load_s, plan_s = plan_100()
        sensor_s = sensor_5000(tmp)
        rows = [
            ("no-op reconcile of the test stack (second apply, engine time)", f"{noop_s:.2f} s",
             f"{recreated} recreated", "—", "≤ 2 s, 0 recreations"),
            ("plan for 100 synthetic services (pure planner)", f"{plan_s * 1000:.0f} ms",
             f"load+validate {load_s * 1000:.0f} ms", "—", "≤ 1 s"),
            ("code location load (`import definitions`)", f"{t_defs:.2f} s", f"import dagster {t_dagster:.2f} s",
             f"+{t_defs - t_dagster:.2f} s", "≤ 1.0 s more"),
            ("sensor evaluation, 5,000-commit repo, one new commit", f"{sensor_s:.2f} s", "—", "—", "≤ 2 s"),
        ]
        print(f"\n{'figure':<66} {'measured':>10}  baseline / note")
        for r in rows:
            print(f"{r[0]:<66} {r[1]:>10}  {r[2]} ({r[4]})")
        print(f"machine: {machine()}")
        append_result("engine_and_gitops", rows)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
