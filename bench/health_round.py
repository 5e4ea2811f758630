"""The cost of one health round (`checks_every_health`: every service's `healthy` check and its probe) over the whole
test stack, deployed on the real Engine, beside a baseline measured in the same run: one `docker inspect` of every
container of the stack. Wall time and this process's CPU (the round runs in-process, as the in-process executor of
a daemon-launched run does).

Prints a table and appends to bench/RESULTS.md. Measures; never asserts.
"""

import os
import resource
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import dagster as dg  # noqa: E402

import docker  # noqa: E402
from bench.common import append_result, machine  # noqa: E402
from prodg_assets.contract import CHECK_SCHEDULE_PREFIX  # noqa: E402
from tests.conftest import make_testbed  # noqa: E402

ROUNDS = 5


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(work) -> tuple[float, float]:
    """Median wall and CPU seconds of ROUNDS runs of `work`."""
    walls, cpus = [], []
    for _ in range(ROUNDS):
        w0, c0 = time.perf_counter(), cpu()
        work()
        walls.append(time.perf_counter() - w0)
        cpus.append(cpu() - c0)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    client = docker.from_env()
    with tempfile.TemporaryDirectory(prefix="prodg-bench-health-") as tmp:
        bed = make_testbed(tmp, client, f"prodgh{os.getpid() % 10000}")
        old_env = dict(os.environ)
        os.environ.update(bed.env)
        try:
            with dg.instance_for_test() as instance:
                deployed = bed.materialize(instance=instance)
                defs = bed.defs()
                schedule = defs.resolve_schedule_def(f"{CHECK_SCHEDULE_PREFIX}health")
                job = defs.get_repository_def().get_job(schedule.job_name)
                containers = [c.id for c in client.containers.list(
                    all=True, filters={"label": f"prodg.project={bed.project}"})]
                first = job.execute_in_process(instance=instance, raise_on_error=False)
                checks = len(first.get_asset_check_evaluations())

                def inspect_all():
                    for cid in containers:
                        client.api.inspect_container(cid)

                base_wall, base_cpu = measure(inspect_all)
                round_wall, round_cpu = measure(lambda: job.execute_in_process(instance=instance,
                                                                               raise_on_error=False))
        finally:
            bed.cleanup()
            os.environ.clear()
            os.environ.update(old_env)
    notes = [] if deployed.success else ["the stack's deploy run did not fully succeed on this machine (a service "
                                         "without its image): its checks are red, still measured"]
    rows = [(f"one health round of the test stack ({len(containers)} containers, {checks} checks; median of "
             f"{ROUNDS})", f"{1000 * round_wall:.0f} ms wall",
             f"one docker inspect of every container: {1000 * base_wall:.1f} ms", f"{round_wall / base_wall:.0f}×",
             "reported"),
            ("its CPU (this process)", f"{1000 * round_cpu:.0f} ms", f"{1000 * base_cpu:.1f} ms",
             f"{round_cpu / base_cpu:.0f}×" if base_cpu else "—", "reported")]
    print(f"health round — {machine()}")
    for row in rows:
        print(" | ".join(str(c) for c in row))
    for note in notes:
        print(note)
    append_result("health_round", rows, notes)


if __name__ == "__main__":
    main()
