"""A big mainframe: the test bed's config grown to 150 services (bench/big_config.py: the bed's six plus small
containers of its base image, spread over the layers, loopback ports the Engine picks or none), measured beside the
same config at 14 services (the mainframe's own count) in the same run, on the real Engine:

- `prodg validate` (the command, a fresh process) and the validation itself (in process);
- the code location's load (`import definitions` in a fresh process, as every run and code server does) and
  `build_defs` in process;
- the webserver's answer to the asset graph's query (GraphQL `assetNodes`), and, at 150, the UI's asset graph in
  headless Chromium: the layers' groups on the global lineage, and the last service's node on its group's graph
  (screenshots in bench/output/, not committed);
- the first deploy (the engine, services of one dependency wave four at a time; reported, no target);
- a no-op reconcile: every service applied again through the engine at the same commit (0 recreated);
- `prodg plan` (the command; 0 changes);
- the git sensor's tick for a commit that changes one service, and that one-service push until its container runs
  the commit: the tick, then the run it requested (in process, Dagster's in-process executor, with the service's
  checks).

Growth is the figure at 150 over the figure at 14 (10.7× the services). Targets: work that reads or compares the
whole config grows at most linearly (≤ 10.7×: a step quadratic in the services grows 10.7² times); a one-service
push costs about the same whatever the config's size (≤ 1.5×); the 150-service UI graph renders. Prints a table
with met/missed and appends it to bench/RESULTS.md. Measures; never asserts (it stops when a step did not do what
it measures, e.g. a reconcile that recreated something).
Usage: .venv/bin/python bench/big_mainframe.py [--services 150] [--baseline 14] [--repeats 3] [--no-ui]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import dagster as dg  # noqa: E402

import docker  # noqa: E402
import prodg_assets  # noqa: E402
from bench.big_config import added_name, grow  # noqa: E402
from bench.common import append_result, machine  # noqa: E402
from prodg_assets.contract import SENSOR_NAME  # noqa: E402
from prodg_assets.desired import DirTree, asset_name, validate  # noqa: E402
from prodg_assets.settings import EnvSettings  # noqa: E402
from tests.browser import look, shown  # noqa: E402
from tests.conftest import make_testbed  # noqa: E402
from tests.dagster_dev import Dagster, stop  # noqa: E402
from tests.registry import REGISTRY_SCRIPT, local_registry  # noqa: E402
from tests.standins.process import free_port  # noqa: E402

PY = sys.executable
OUTPUT = os.path.join(ROOT, "bench", "output")
LINEAR, ONE_SERVICE = "linear", "one service"


def median_of(repeats: int, work) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        work()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(cmd: list[str], expect: str = "") -> str:
    proc = subprocess.run(cmd, cwd=ROOT, env=os.environ.copy(), capture_output=True, text=True, timeout=900)
    if proc.returncode != 0 or expect not in proc.stdout:
        raise RuntimeError(f"{' '.join(cmd[-3:])} exited {proc.returncode}: {(proc.stdout + proc.stderr)[-2000:]}")
    return proc.stdout


class Size:
    """One config size on the Engine: its test bed (a real git repo), grown, and what was measured of it."""

    def __init__(self, client: docker.DockerClient, tmp: str, total: int):
        self.total = total
        self.bed = make_testbed(os.path.join(tmp, f"n{total}"), client, f"prodgbig{uuid.uuid4().hex[:8]}")
        self.config = os.path.join(self.bed.repo, "config")
        self.last = added_name(total)
        grow(self.config, total)
        # a loaded machine (other test runs on the 2 cores) can keep Caddy from answering within the bed's 60 s
        self.bed.edit("prodg.yaml", "health_timeout_s: 60", "health_timeout_s: 300")
        self.bed.commit(f"the test bed grown to {total} services")
        self.figures: dict[str, float] = {}
        self.notes: list[str] = []

    def env(self) -> None:
        os.environ.update(self.bed.env)

    # -- the config alone -------------------------------------------------------------------------------------------
    def measure_config(self, repeats: int) -> None:
        self.env()
        environ = dict(os.environ)
        self.figures["validate_cli"] = median_of(repeats, lambda: run(
            [PY, "-m", "prodg_assets.cli", "validate", self.config], expect="valid"))

        def in_process():
            errors = validate(DirTree(self.config), environ)
            if errors:
                raise RuntimeError(f"{self.total} services: {errors[:3]}")
        self.figures["validate"] = median_of(repeats, in_process)
        self.figures["load_cli"] = median_of(repeats, lambda: run([PY, "-c", "import definitions"]))
        self.figures["build_defs"] = median_of(repeats, lambda: prodg_assets.build_defs(environ))

    # -- the UI -----------------------------------------------------------------------------------------------------
    def measure_ui(self, tmp: str, repeats: int, screenshots: bool) -> None:
        """The webserver alone (no daemon, so nothing deploys) over this bed's code location."""
        self.env()
        home = os.path.join(tmp, f"dagster_home_{self.total}")
        os.makedirs(home)
        shutil.copy(os.path.join(ROOT, "docker", "dev", "dagster.yaml"), home)
        workspace = os.path.join(tmp, f"workspace_{self.total}.yaml")
        with open(workspace, "w") as fh:
            fh.write(f"load_from:\n  - python_file:\n      relative_path: {ROOT}/definitions.py\n"
                     f"      working_directory: {ROOT}\n      location_name: prodg\n")
        port = free_port()
        log = os.path.join(tmp, f"webserver_{self.total}.log")
        with open(log, "w") as out:
            proc = subprocess.Popen([PY, "-m", "dagster_webserver", "-h", "127.0.0.1", "-p", str(port), "-w",
                                     workspace], cwd=tmp, env={**os.environ, "DAGSTER_HOME": home}, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        try:
            ui = Dagster(f"http://127.0.0.1:{port}", log)
            t0 = time.perf_counter()
            keys = ui.wait("the code location", lambda: ui.asset_keys(), budget=600)
            self.figures["ui_ready"] = time.perf_counter() - t0
            expected = {k.to_user_string() for k in
                        prodg_assets.build_defs(dict(os.environ)).resolve_asset_graph().get_all_asset_keys()}
            if keys != expected:
                raise RuntimeError(f"the webserver serves {len(keys)} assets, the definitions have {len(expected)}")
            self.figures["ui_assets"] = len(keys)
            self.figures["ui_query"] = median_of(repeats, ui.asset_keys)
            if screenshots:
                self.screenshots(ui.url, tmp)
        finally:
            stop(proc)

    def screenshots(self, url: str, tmp: str) -> None:
        specs = prodg_assets.build_defs(dict(os.environ)).resolve_all_asset_specs()
        groups = {spec.group_name for spec in specs}
        os.makedirs(OUTPUT, exist_ok=True)
        dom, shot = look(f"{url}/asset-groups", os.path.join(tmp, "chromium"), f"big-mainframe-{self.total}.png",
                         ready=lambda d: all(shown(g, d) for g in groups))
        absent = sorted(g for g in groups if not shown(g, dom))
        last = asset_name(self.last)
        group = next(s.group_name for s in specs if s.key.to_user_string() == last)
        gdom, gshot = look(f"{url}/locations/__repository__@prodg/asset-groups/{group}",
                           os.path.join(tmp, "chromium"), f"big-mainframe-{self.total}-{group}.png",
                           ready=lambda d: shown(last, d))
        kept = []
        for path in (shot, gshot):
            dest = os.path.join(OUTPUT, os.path.basename(path))
            shutil.move(path, dest)
            kept.append(dest)
        self.figures["ui_groups_shown"] = len(groups) - len(absent)
        self.figures["ui_groups"] = len(groups)
        self.figures["ui_last_node"] = float(shown(last, gdom))
        self.notes.append(f"asset graph at {self.total} services: {len(groups) - len(absent)} of {len(groups)} "
                          f"layer groups on the global lineage ({'missing: ' + ', '.join(absent) if absent else 'all'})"
                          f"; `{last}` {'is' if shown(last, gdom) else 'is NOT'} a node of the `{group}` group's "
                          f"graph; screenshots {', '.join(os.path.relpath(k, ROOT) for k in kept)} "
                          f"({', '.join(f'{os.path.getsize(k) // 1024} KiB' for k in kept)})")

    # -- on the Engine ----------------------------------------------------------------------------------------------
    def resources(self):
        from prodg_assets import build_resources, config_repo

        env = EnvSettings.from_env(os.environ)
        repo = config_repo(env)
        state = repo.desired_state(self.bed.commits[-1], materialise=True)
        resources = build_resources(state, env)
        return repo, state, resources["docker"], resources["secrets"].values()

    def deploy(self) -> None:
        """The networks, then every service, wave by wave of its dependencies, four at a time (the engine, as the
        assets call it)."""
        self.env()
        repo, state, engine, secrets = self.resources()
        sha = self.bed.commits[-1]
        done: set[str] = set()
        t0 = time.perf_counter()
        for net in state.networks.values():  # as the docker_network asset does, upstream of every service
            engine.ensure_network(net, state.project)
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            while len(done) < len(state.services):
                wave = [s for s in sorted(state.services) if s not in done and set(state.upstream(s)) <= done]
                if not wave:
                    raise RuntimeError(f"no service left to deploy of {sorted(set(state.services) - done)}")
                list(pool.map(lambda s: engine.apply_service(
                    state, s, secrets, sha, build_root=repo.build_root(state.services[s], sha)), wave))
                done |= set(wave)
        self.figures["deploy"] = time.perf_counter() - t0

    def noop_reconcile(self, repeats: int) -> None:
        self.env()
        repo, state, engine, secrets = self.resources()
        sha = self.bed.commits[-1]
        before = {s: c.id for s, c in self.bed.containers().items()}
        if len(before) != self.total:
            raise RuntimeError(f"{len(before)} containers of {self.total} services")

        def reconcile():
            for service in sorted(state.services):
                result = engine.apply_service(state, service, secrets, sha,
                                              build_root=repo.build_root(state.services[service], sha))
                if result.action != "unchanged":
                    raise RuntimeError(f"no-op reconcile: {service} {result.action}")
        self.figures["noop"] = median_of(repeats, reconcile)
        after = {s: c.id for s, c in self.bed.containers().items()}
        self.figures["recreated"] = sum(before[s] != after.get(s) for s in before)

    def plan(self, repeats: int) -> None:
        self.env()
        self.figures["plan_cli"] = median_of(repeats, lambda: run([PY, "-m", "prodg_assets.cli", "plan"],
                                                                   expect="\n0 change(s)"))

    def push(self, repeats: int) -> None:
        """`repeats` one-service pushes of the last service: the sensor's tick (the code location loaded at the
        deployed commit, the cursor there), then the run it requested, until the container runs the commit."""
        self.env()
        defs = prodg_assets.build_defs(dict(os.environ))
        sensor = defs.resolve_sensor_def(SENSOR_NAME)
        job = defs.resolve_implicit_global_asset_job_def()
        cursor = f"{self.bed.commits[-1]}:1"
        want = {dg.AssetKey(asset_name(self.last))}
        ticks, pushes = [], []
        with dg.instance_for_test() as instance:
            for i in range(repeats):
                marker = f"      SERVICE_NUMBER: \"{self.total}\"\n"
                self.bed.edit("compose/docker-compose.yml", marker + (f"      PUSH: \"{i - 1}\"\n" if i else ""),
                              marker + f"      PUSH: \"{i}\"\n")
                sha = self.bed.commit(f"{self.last}: push {i}")
                t0 = time.perf_counter()
                with dg.build_sensor_context(instance=instance, cursor=cursor,
                                             repository_def=defs.get_repository_def(),
                                             resources={"repo": defs.resources["repo"]}) as ctx:
                    result = sensor.evaluate_tick(ctx)
                tick = time.perf_counter() - t0
                if len(result.run_requests) != 1 or set(result.run_requests[0].asset_selection) != want:
                    raise RuntimeError(f"push {i}: the sensor asked for {result.run_requests} "
                                       f"({result.skip_message})")
                request = result.run_requests[0]
                ran = job.get_subset(asset_selection=set(request.asset_selection)).execute_in_process(
                    instance=instance, tags=request.tags, raise_on_error=False)
                pushed = time.perf_counter() - t0
                live = self.bed.client.api.inspect_container(f"{self.bed.project}-{self.last}")
                if not ran.success or live["Config"]["Labels"].get("prodg.commit") != sha or \
                        not live["State"]["Running"]:
                    raise RuntimeError(f"push {i}: run {'succeeded' if ran.success else 'failed'}, {self.last} "
                                       f"runs {live['Config']['Labels'].get('prodg.commit', '?')[:12]}")
                cursor = result.cursor
                ticks.append(tick)
                pushes.append(pushed)
        self.figures["tick"] = statistics.median(ticks)
        self.figures["push"] = statistics.median(pushes)


def load_average() -> str:
    with open("/proc/loadavg") as fh:
        return fh.read().split()[0]


def fmt(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s" if seconds < 10 else f"{seconds:.1f} s"


def rows_of(big: Size, base: Size, repeats: int) -> tuple[list[tuple], list[str]]:
    n, b = big.total, base.total
    linear = n / b
    targets = {LINEAR: linear, ONE_SERVICE: 1.5}
    spec = [
        ("validate_cli", f"`prodg validate` (the command, a fresh process; median of {repeats})", LINEAR),
        ("validate", "validation in process (load + every cross-check)", LINEAR),
        ("load_cli", "code location load (`import definitions`, a fresh process)", LINEAR),
        ("build_defs", "`build_defs` in process (the graph's desired state at the head + every definition)", LINEAR),
        ("ui_ready", "webserver started → asset graph served (the code location loaded by `dagster-webserver`)",
         LINEAR),
        ("ui_query", "the asset graph's query (GraphQL `assetNodes`) answered", LINEAR),
        ("noop", f"no-op reconcile: every service applied again at the same commit (engine time, median of "
                 f"{repeats})", LINEAR),
        ("plan_cli", "`prodg plan` (the command: desired vs live on the Engine, the registry asked; 0 changes)",
         LINEAR),
        ("tick", "git sensor tick, one new commit changing one service (median of pushes)", LINEAR),
        ("push", "one-service push: that tick + the run it requested (in process, with the service's checks) until "
                 "the container runs the commit", ONE_SERVICE),
    ]
    rows, verdicts = [], []
    for key, what, kind in spec:
        if key not in big.figures or key not in base.figures:
            continue
        ratio = big.figures[key] / base.figures[key]
        met = ratio <= targets[kind]
        target = f"≤ {targets[kind]:.1f}× ({'linear in the services' if kind == LINEAR else 'flat'}): " \
                 f"{'met' if met else 'MISSED'}"
        rows.append((f"{what}, {n} services", fmt(big.figures[key]), f"{b} services: {fmt(base.figures[key])}",
                     f"{ratio:.2f}×", target))
        verdicts.append(met)
    if "deploy" in big.figures:
        rows.append((f"first deploy of every service (engine, one dependency wave at a time, 4 at once), "
                     f"{n} services", fmt(big.figures["deploy"]), f"{b} services: {fmt(base.figures['deploy'])}",
                     f"{big.figures['deploy'] / base.figures['deploy']:.2f}×", "reported"))
    if "recreated" in big.figures:
        rows.append(("containers recreated by the no-op reconcile", f"{big.figures['recreated']:.0f} of {n}",
                     f"{base.figures['recreated']:.0f} of {b}", "—", "0: " +
                     ("met" if big.figures["recreated"] == base.figures["recreated"] == 0 else "MISSED")))
    if "ui_last_node" in big.figures:
        ok = big.figures["ui_last_node"] == 1 and big.figures["ui_groups_shown"] == big.figures["ui_groups"]
        rows.append((f"UI asset graph (headless Chromium), {n} services: {big.figures['ui_assets']:.0f} assets",
                     f"{big.figures['ui_groups_shown']:.0f} of {big.figures['ui_groups']:.0f} groups shown; "
                     f"`{asset_name(big.last)}` {'drawn' if big.figures['ui_last_node'] else 'NOT drawn'}",
                     f"{b} services: {base.figures['ui_assets']:.0f} assets", "—",
                     "renders: " + ("met" if ok else "MISSED")))
    notes = big.notes + [f"{sum(verdicts)} of {len(verdicts)} growth targets met; {n} / {b} = {linear:.1f}× the "
                         f"services. Each size is a real git repo of the test bed's config grown by "
                         f"bench/big_config.py, deployed on the Engine (prodg/base:bookworm containers); 14 first, "
                         f"then {n}, in the same run"]
    return rows, notes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--services", type=int, default=150)
    parser.add_argument("--baseline", type=int, default=14)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-ui", action="store_true", help="skip the webserver and Chromium")
    args = parser.parse_args()
    client = docker.from_env()
    tmp = tempfile.mkdtemp(prefix="prodg-bench-big-")
    saved = dict(os.environ)
    sizes: list[Size] = []
    registry = None
    try:
        if not os.environ.get("PRODG_REGISTRY_MIRROR"):
            # the seed's image names, pulled through a registry on loopback as the suite does (tests/conftest.py)
            registry = local_registry(os.path.join(tmp, "registry"))
            address = registry.__enter__()
            subprocess.run([REGISTRY_SCRIPT, "push", address], check=True, capture_output=True)
            os.environ["PRODG_REGISTRY_MIRROR"] = address
        loads = [load_average()]
        for total in (args.baseline, args.services):
            size = Size(client, tmp, total)
            sizes.append(size)
            print(f"{total} services: {size.bed.project}", flush=True)
            size.measure_config(args.repeats)
            if not args.no_ui:
                size.measure_ui(tmp, args.repeats, screenshots=total == args.services)
            size.deploy()
            size.noop_reconcile(args.repeats)
            size.plan(args.repeats)
            size.push(args.repeats)
            print(f"{total} services: " + ", ".join(f"{k} {v:.3f}" for k, v in size.figures.items()), flush=True)
            size.bed.cleanup()
        loads.append(load_average())
        base, big = sizes
        rows, notes = rows_of(big, base, args.repeats)
        notes.append(f"machine load (1-minute load average, /proc/loadavg) at the start {loads[0]}, at the end "
                     f"{loads[1]}: other processes (concurrent test runs) shared the machine")
        print(f"\n{'figure':<110} {'measured':>10} {'baseline':>22} {'ratio':>7}  target")
        for r in rows:
            print(f"{r[0]:<110} {r[1]:>10} {r[2]:>22} {r[3]:>7}  {r[4]}")
        for note in notes:
            print(f"- {note}")
        print(f"machine: {machine()}")
        append_result("big_mainframe", rows, notes)
    finally:
        for size in sizes:
            try:
                size.bed.cleanup()
            except Exception as exc:  # keep cleaning up
                print(f"could not clean up {size.bed.project}: {exc}", file=sys.stderr)
        if registry is not None:
            registry.__exit__(None, None, None)
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
