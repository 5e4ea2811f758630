"""The cost of one scrape of `prodg exporter`: latency and the exporter's CPU per scrape, against an instance holding
the test stack's history (EVENTS materialisations of each service and EVENTS results of each check), beside a
baseline measured in the same run: a request the same listener answers without reading the instance (a 404 behind
the same token check).

Prints a table and appends to bench/RESULTS.md. Measures; never asserts.
"""

import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import dagster as dg  # noqa: E402
import requests  # noqa: E402

import docker  # noqa: E402
from bench.common import append_result, machine  # noqa: E402
from bench.measure import proc_cpu  # noqa: E402
from tests.conftest import make_testbed  # noqa: E402
from tests.standins.process import free_port  # noqa: E402

EVENTS, SCRAPES, TOKEN = 200, 50, "bench-token"


def populate(home: str, env: dict) -> tuple[int, int]:
    """EVENTS materialisations of every service asset and EVENTS results of every check; (assets, checks)."""
    os.environ.update(env)
    from prodg_assets import build_defs
    from prodg_assets.watch.metrics import graph_of

    graph = graph_of(build_defs())
    with dg.DagsterInstance.from_config(home) as instance:
        for i in range(EVENTS):
            for key in graph.services:
                instance.report_runless_asset_event(dg.AssetMaterialization(
                    asset_key=key, metadata={"commit": f"{i:040x}", "image_id": f"sha256:{i:064x}"}))
            for check in graph.checks:
                instance.report_runless_asset_event(dg.AssetCheckEvaluation(
                    asset_key=check.asset_key, check_name=check.name, passed=i % 7 != 0))
    return len(graph.services), len(graph.checks)


def timed(url: str, pid: int) -> tuple[list[float], float]:
    times, cpu0 = [], proc_cpu(pid)
    for _ in range(SCRAPES):
        t0 = time.perf_counter()
        requests.get(url, timeout=60, headers={"Authorization": f"Bearer {TOKEN}"})
        times.append(time.perf_counter() - t0)
    return times, (proc_cpu(pid) - cpu0) / SCRAPES


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="prodg-bench-metrics-") as tmp:
        bed = make_testbed(tmp, docker.from_env(), f"prodgm{os.getpid() % 10000}")
        home = os.path.join(tmp, "dagster_home")
        os.makedirs(home)
        assets, checks = populate(home, bed.env)
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "prodg_assets.cli", "exporter", "--listen", f"127.0.0.1:{port}"],
                                env={**os.environ, **bed.env, "DAGSTER_HOME": home, "PRODG_METRICS_TOKEN": TOKEN,
                                     "PRODG_LISTEN_RATE_PER_MINUTE": "100000"},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(300):
                try:
                    if requests.get(f"http://127.0.0.1:{port}/metrics", timeout=60,
                                    headers={"Authorization": f"Bearer {TOKEN}"}).ok:
                        break  # the first scrape also builds the asset graph: not measured
                except requests.ConnectionError:
                    time.sleep(0.2)
            base, base_cpu = timed(f"http://127.0.0.1:{port}/nothing", proc.pid)
            scrape, scrape_cpu = timed(f"http://127.0.0.1:{port}/metrics", proc.pid)
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    def p(values, q):
        return sorted(values)[min(len(values) - 1, int(q * len(values)))]

    rows = [(f"one scrape of `prodg exporter` ({assets} services, {checks} checks, {EVENTS} events each; "
             f"{SCRAPES} scrapes)",
             f"p50 {1000 * statistics.median(scrape):.1f} ms, p95 {1000 * p(scrape, .95):.1f} ms",
             f"404 from the same listener: p50 {1000 * statistics.median(base):.1f} ms",
             f"{statistics.median(scrape) / statistics.median(base):.1f}×", "reported"),
            ("exporter CPU per scrape", f"{1000 * scrape_cpu:.1f} ms", f"{1000 * base_cpu:.1f} ms",
             f"{scrape_cpu / base_cpu:.1f}×" if base_cpu else "—", "reported")]
    print(f"metrics scrape — {machine()}")
    for row in rows:
        print(" | ".join(str(c) for c in row))
    append_result("metrics_scrape", rows)


if __name__ == "__main__":
    main()
