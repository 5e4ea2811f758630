"""Push → new container healthy, with the Dagster daemon running the git sensor (one-service change, N pushes),
beside the baseline of recreating the same container directly through the Engine API (prodg's engine, no Dagster).

Prints a table and appends a dated row to bench/RESULTS.md. Measures; never asserts.
Usage: .venv/bin/python bench/push_to_healthy.py [--pushes 10] [--interval 5]
"""

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import docker  # noqa: E402

from bench.common import append_result, machine  # noqa: E402
from tests.conftest import git, make_testbed  # noqa: E402


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


def wait_healthy(client: docker.DockerClient, name: str, commit: str, timeout: float = 300) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            c = client.api.inspect_container(name)
            state = c["State"]
            if c["Config"]["Labels"].get("prodg.commit") == commit and state.get("Running") and \
                    (state.get("Health") or {}).get("Status") == "healthy":
                return time.monotonic()
        except docker.errors.NotFound:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{name} not healthy at {commit[:12]} within {timeout}s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pushes", type=int, default=10)
    parser.add_argument("--interval", type=int, default=5, help="sensor minimum interval (s)")
    args = parser.parse_args()
    client = docker.from_env()
    tmp = tempfile.mkdtemp(prefix="prodg-bench-")
    bed = make_testbed(tmp, client, f"prodgb{os.getpid() % 10000}")
    bare, clone = os.path.join(tmp, "origin.git"), os.path.join(tmp, "operator")
    subprocess.run(["git", "clone", "-q", "--bare", bed.repo, bare], check=True)
    subprocess.run(["git", "clone", "-q", bare, clone], check=True)
    git(clone, "config", "user.email", "bench@prodg.test")
    git(clone, "config", "user.name", "bench")
    home = os.path.join(tmp, "dagster_home")
    os.makedirs(home)
    shutil.copy(os.path.join(ROOT, "docker", "dev", "dagster.yaml"), home)
    bed.env.update({"PRODG_REPO": os.path.join(tmp, "mirror"), "PRODG_REPO_URL": bare, "DAGSTER_HOME": home,
                    "PRODG_SENSOR_INTERVAL_S": str(args.interval)})
    os.environ.update(bed.env)
    compose = os.path.join(clone, "config", "compose", "docker-compose.yml")
    redis = f"{bed.project}-redis"
    daemon = None
    try:
        bed.cleanup()
        # Baseline first: the same one-service change applied straight through prodg's engine (no Dagster).
        from prodg_assets import build_resources
        from prodg_assets.settings import EnvSettings
        from prodg_assets.gitops.repo import ConfigRepo

        assert bed.materialize().success
        resources = build_resources(ConfigRepo(repo_path=bed.repo).desired_state(git(bed.repo, "rev-parse", "HEAD")),
                                    EnvSettings.from_env(os.environ))
        engine, secrets = resources["docker"], resources["secrets"].values()
        baseline = []
        for i in range(args.pushes):
            bed.edit("compose/docker-compose.yml", "      REDIS_PASSWORD: ${REDIS_PASSWORD}\n",
                     f"      REDIS_PASSWORD: ${{REDIS_PASSWORD}}\n      BASELINE: \"{i}\"\n")
            sha = bed.commit(f"baseline {i}")
            state = ConfigRepo(repo_path=bed.repo, deploy_root=os.path.join(tmp, "deployed")).desired_state(
                sha, materialise=True)
            t0 = time.monotonic()
            engine.apply_service(state, "redis", secrets, sha)
            baseline.append(time.monotonic() - t0)
            bed.edit("compose/docker-compose.yml", f"      BASELINE: \"{i}\"\n", "")
        # Re-sync the operator clone with what the bed repo holds now, then let the daemon own deploys.
        git(bed.repo, "push", "-q", "--force", bare, "HEAD:main")
        git(clone, "fetch", "-q", "origin")
        git(clone, "reset", "-q", "--hard", "origin/main")
        workspace = os.path.join(tmp, "workspace.yaml")
        with open(workspace, "w") as fh:
            fh.write(f"load_from:\n  - python_file:\n      relative_path: {ROOT}/definitions.py\n"
                     f"      working_directory: {ROOT}\n      location_name: prodg\n")
        log = open(os.path.join(tmp, "daemon.log"), "w")
        daemon = subprocess.Popen([os.path.join(ROOT, ".venv", "bin", "dagster-daemon"), "run", "-w", workspace],
                                  env=os.environ.copy(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        # The first tick reconciles the current head (everything unchanged); wait until redis carries that commit.
        head = git(clone, "rev-parse", "HEAD")
        wait_healthy(client, redis, head, timeout=600)
        latencies = []
        for i in range(args.pushes):
            with open(compose) as fh:
                text = fh.read()
            marker = "      REDIS_PASSWORD: ${REDIS_PASSWORD}\n"
            text = text.replace(marker, f"{marker}      PUSH: \"{i}\"\n", 1) if i == 0 else \
                text.replace(f"      PUSH: \"{i - 1}\"\n", f"      PUSH: \"{i}\"\n")
            with open(compose, "w") as fh:
                fh.write(text)
            git(clone, "commit", "-qam", f"redis: push {i}")
            sha = git(clone, "rev-parse", "HEAD")
            t0 = time.monotonic()
            git(clone, "push", "-q", "origin", "HEAD:main")
            latencies.append(wait_healthy(client, redis, sha) - t0)
            print(f"push {i}: {latencies[-1]:.1f}s", flush=True)
        p50, p95 = statistics.median(latencies), pct(latencies, 0.95)
        b50 = statistics.median(baseline)
        rows = [
            ("push → healthy p50 (daemon, sensor interval %ds)" % args.interval, f"{p50:.1f} s", f"{b50:.1f} s",
             f"{p50 / b50:.1f}×", "p50 ≤ 15 s"),
            ("push → healthy p95", f"{pct(latencies, 0.95):.1f} s", f"{pct(baseline, 0.95):.1f} s",
             f"{p95 / pct(baseline, 0.95):.1f}×", "p95 ≤ 30 s"),
        ]
        print(f"\n{'figure':<48} {'measured':>10} {'baseline':>10} {'ratio':>7}  target")
        for r in rows:
            print(f"{r[0]:<48} {r[1]:>10} {r[2]:>10} {r[3]:>7}  {r[4]}")
        print(f"baseline: recreate the redis container through the Engine API (prodg engine, no Dagster), "
              f"{args.pushes}×; machine: {machine()}")
        append_result("push_to_healthy", rows)
    finally:
        if daemon is not None:
            os.killpg(daemon.pid, signal.SIGTERM)
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(daemon.pid, signal.SIGKILL)
        bed.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
