"""Push → new container healthy under `dagster dev` (webserver + daemon running the git sensor), beside the baseline of
recreating the same container directly through the Engine API (prodg's engine, no Dagster):

- a one-service change (Redis' environment), N pushes found by polling (the sensor's interval), with each push split
  into its parts: push → run queued (the sensor's tick interval, the fetch and the evaluation), queued → run started
  (the run queue and the run's process loading the code location), run start → Redis' step (resources, upstream steps),
  step → container started (the state at the commit, the lay-out, the image, the create), started → healthy (the health
  wait);
- the same change told: the bare remote's post-receive hook POSTs to `prodg webhook`, which evaluates the git sensor at
  once (gitops.push) while polling goes on beside it;
- a push that adds a service (a new Redis-like cache), M pushes, told by the hook: the evaluation asks the webserver to
  reload the code location and evaluates again in the reloaded one.

Prints tables and appends dated rows to bench/RESULTS.md. Measures; never asserts.
Usage: .venv/bin/python bench/push_to_healthy.py [--pushes 10] [--new-services 3] [--interval 4]
"""

import argparse
import datetime
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
from tests.dagster_dev import free_port  # noqa: E402
from tests.gitops.test_graph_follows_branch import cache_service  # noqa: E402


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


def wait_healthy(client: docker.DockerClient, name: str, commit: str, timeout: float = 300) -> float:
    """The wall-clock time (time.time()) at which `name` runs `commit`, healthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            c = client.api.inspect_container(name)
            state = c["State"]
            if c["Config"]["Labels"].get("prodg.commit") == commit and state.get("Running") and \
                    (state.get("Health") or {}).get("Status") == "healthy":
                return time.time()
        except docker.errors.NotFound:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{name} not healthy at {commit[:12]} within {timeout}s")


def engine_time(text: str) -> float:
    """An Engine timestamp ("2026-11-30T15:40:01.123456789Z") as seconds since the epoch."""
    head, _, frac = text.rstrip("Z").partition(".")
    stamp = datetime.datetime.strptime(head, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=datetime.timezone.utc)
    return stamp.timestamp() + float(f"0.{frac or 0}")


PARTS = ("push → run queued", "queued → run started", "run start → step", "step → container started",
         "started → healthy")


def parts_of(home: str, client: docker.DockerClient, container: str, step: str, sha: str, pushed: float,
             healthy: float) -> dict[str, float]:
    """The parts of one push → healthy, from the Dagster instance's records and the Engine's."""
    import dagster as dg

    from prodg_assets.contract import SENSOR_NAME

    with dg.DagsterInstance.from_config(home) as instance:
        records = instance.get_run_records(filters=dg.RunsFilter(
            tags={"prodg/commit": sha, "dagster/sensor_name": SENSOR_NAME}))
        record = min(records, key=lambda r: r.create_timestamp)
        logs = instance.all_logs(record.dagster_run.run_id)
    queued = record.create_timestamp.timestamp()
    started = next(r.timestamp for r in logs if r.dagster_event
                   and r.dagster_event.event_type == dg.DagsterEventType.RUN_START)
    step_start = next(r.timestamp for r in logs if r.dagster_event and r.dagster_event.step_key == step
                      and r.dagster_event.event_type == dg.DagsterEventType.STEP_START)
    running = engine_time(client.api.inspect_container(container)["State"]["StartedAt"])
    return dict(zip(PARTS, (queued - pushed, started - queued, step_start - started, running - step_start,
                            healthy - running)))


def measure(how: str, push, count: int) -> tuple[list[float], list[dict[str, float]]]:
    latencies, parts = [], []
    for i in range(count):
        latency, part = push()
        latencies.append(latency)
        parts.append(part)
        print(f"{how} push {i}: {latency:.1f}s (" + ", ".join(f"{k} {v:.1f}" for k, v in part.items()) + ")",
              flush=True)
    return latencies, parts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pushes", type=int, default=10)
    parser.add_argument("--new-services", type=int, default=3, help="pushes that each add a service")
    parser.add_argument("--interval", type=int, default=4,
                        help="sensor minimum interval (s); under the daemon's 5 s loop, so every loop ticks")
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
    url = f"http://127.0.0.1:{free_port()}"
    bed.env.update({"PRODG_REPO": os.path.join(tmp, "mirror"), "PRODG_REPO_URL": bare, "DAGSTER_HOME": home,
                    "PRODG_SENSOR_INTERVAL_S": str(args.interval), "PRODG_DAGSTER_URL": url})
    os.environ.update(bed.env)
    compose = os.path.join(clone, "config", "compose", "docker-compose.yml")
    redis = f"{bed.project}-redis"
    daemon = webhook = None
    try:
        bed.cleanup()
        # Baseline first: the same one-service change applied straight through prodg's engine (no Dagster).
        from prodg_assets import build_resources
        from prodg_assets.gitops.repo import ConfigRepo
        from prodg_assets.settings import EnvSettings

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
        log = open(os.path.join(tmp, "dagster-dev.log"), "w")
        daemon = subprocess.Popen([os.path.join(ROOT, ".venv", "bin", "dagster"), "dev", "-h", "127.0.0.1", "-p",
                                   url.rsplit(":", 1)[1], "-w", workspace], cwd=tmp,
                                  env=os.environ.copy(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        # The first tick reconciles the current head (everything unchanged); wait until redis carries that commit.
        head = git(clone, "rev-parse", "HEAD")
        wait_healthy(client, redis, head, timeout=600)
        counter = iter(range(10 ** 6))

        def push_redis() -> tuple[float, dict[str, float]]:
            """One Redis change pushed to the bare remote: (push → healthy, its parts)."""
            i = next(counter)
            with open(compose) as fh:
                text = fh.read()
            marker = "      REDIS_PASSWORD: ${REDIS_PASSWORD}\n"
            text = text.replace(marker, f"{marker}      PUSH: \"{i}\"\n", 1) if i == 0 else \
                text.replace(f"      PUSH: \"{i - 1}\"\n", f"      PUSH: \"{i}\"\n")
            with open(compose, "w") as fh:
                fh.write(text)
            git(clone, "commit", "-qam", f"redis: push {i}")
            sha = git(clone, "rev-parse", "HEAD")
            t0 = time.time()
            git(clone, "push", "-q", "origin", "HEAD:main")
            healthy = wait_healthy(client, redis, sha)
            return healthy - t0, parts_of(home, client, redis, "redis", sha, t0, healthy)

        polled, polled_parts = measure("polling", push_redis, args.pushes)
        # The same pushes told: the bare remote's post-receive hook POSTs to `prodg webhook`, which evaluates the
        # git sensor at once (polling still runs beside it).
        port = free_port()
        hook_log = open(os.path.join(tmp, "webhook.log"), "w")
        webhook = subprocess.Popen([os.path.join(ROOT, ".venv", "bin", "prodg"), "webhook", "--listen",
                                    f"127.0.0.1:{port}"], cwd=tmp, env=os.environ.copy(), stdout=hook_log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        hook = os.path.join(bare, "hooks", "post-receive")
        with open(hook, "w") as fh:
            fh.write(f"#!/bin/sh\ncurl -fsS -m 5 -o /dev/null -X POST http://127.0.0.1:{port}/ || true\n")
        os.chmod(hook, 0o755)
        told, told_parts = measure("webhook", push_redis, args.pushes)
        added = []
        for i in range(args.new_services):
            with open(compose, "a") as fh:
                fh.write(cache_service(f"cache{i}"))
            git(clone, "add", "-A")
            git(clone, "commit", "-qm", f"cache{i}: a new service")
            sha = git(clone, "rev-parse", "HEAD")
            t0 = time.time()
            git(clone, "push", "-q", "origin", "HEAD:main")
            added.append(wait_healthy(client, f"{bed.project}-cache{i}", sha, timeout=600) - t0)
            print(f"new service {i}: {added[-1]:.1f}s", flush=True)
        b50 = statistics.median(baseline)
        b95 = pct(baseline, 0.95)
        rows = []
        for how, latencies, parts in (("post-receive hook → prodg webhook", told, told_parts),
                                      (f"polling only, sensor interval {args.interval}s", polled, polled_parts)):
            p50, p95 = statistics.median(latencies), pct(latencies, 0.95)
            rows += [
                (f"push → healthy p50 ({how})", f"{p50:.1f} s", f"{b50:.1f} s", f"{p50 / b50:.1f}×",
                 "p50 ≤ 4× baseline"),
                ("push → healthy p95", f"{p95:.1f} s", f"{b95:.1f} s", f"{p95 / b95:.1f}×", "p95 ≤ 6× baseline"),
            ]
            rows += [(f"  of which {name} (p50)", f"{statistics.median(p[name] for p in parts):.1f} s", "—", "—",
                      "—") for name in PARTS]
        if added:
            rows.append((f"push adding a service → healthy p50 ({len(added)} pushes, webhook; reload + re-evaluation)",
                         f"{statistics.median(added):.1f} s", f"{b50:.1f} s", f"{statistics.median(added) / b50:.1f}×",
                         "two sensor intervals + reload + health wait"))
        print(f"\n{'figure':<72} {'measured':>10} {'baseline':>10} {'ratio':>7}  target")
        for r in rows:
            print(f"{r[0]:<72} {r[1]:>10} {r[2]:>10} {r[3]:>7}  {r[4]}")
        print(f"baseline: recreate the redis container through the Engine API (prodg engine, no Dagster), "
              f"{args.pushes}×; machine: {machine()}")
        append_result("push_to_healthy", rows)
    finally:
        if webhook is not None:
            os.killpg(webhook.pid, signal.SIGTERM)
            webhook.wait()
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
