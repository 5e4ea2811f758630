"""Backup throughput: the `postgres_backup` pipeline (pg_dumpall through the exec API → zstd → multipart upload to an
S3 API, here moto_server) against plain `pg_dumpall`, against the seed's `pg_dumpall | gzip`, its peak memory, and
the restore of its object into an empty Postgres against `zstd -dc dump | psql`.

For every size (--sizes, GiB; default 1,4) one Postgres container (prodg/postgres:bookworm, no network, reached only
through exec) is grown to that size with mixed data: pgbench tables (`pgbench -i`, about a fifth of the first size,
very compressible) and a `docs` table of random words and JSON generated server-side (about 3.6× with gzip) up to
320 MiB, then doubled by copying rows (see `build`), so that the whole dump compresses 3–5× with gzip. Sizes up to
--full-up-to (1 GiB) get every figure; larger ones only the backup's wall and peak RSS against
`pg_dumpall > /dev/null` (the memory figure must not grow with size), which keeps bench/run within 15 minutes.

Beside the baselines, the backup is also set against the exec stream alone (pg_dumpall's output read out of the
container through the Engine's exec API and dropped): what the Engine allows before a byte is compressed.

The backup and the restore run in child processes of this script (their peak RSS comes from wait4), instrumented
to split their wall time into waiting for the producer, S3 calls and the rest (zstd, sha256, buffering); the CPU
seconds spent meanwhile by the child, the Postgres container, moto_server, dockerd/containerd and everything else
on the machine (other test runs) are read from /proc and the container's cgroup. `--profile` adds cProfile of the
children.

Prints a table and appends to bench/RESULTS.md. Measures; never asserts.

    .venv/bin/python bench/backup_throughput.py [--sizes 1,4] [--repeats 2] [--restore-repeats 1] [--profile]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from prodg_assets.backups.pipeline import ZSTD_LEVEL  # noqa: E402

IMAGE = "prodg/postgres:bookworm"
PID = os.getpid()
NAME = f"prodgbench{PID}"
BUCKET = f"prodg-bench-{PID}"
KEY_ID, SECRET = "AKIDBENCH", "bench-secret-key"
PASSWORD = f"bench-pg-{PID}"
GIB = 1024 ** 3
MB = 1e6
RSS_TARGET_MB = 200

# the docs table: random words from a small vocabulary and a JSON document per row (rows stay below the TOAST
# threshold, so the table's size on disk is its uncompressed size)
WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa quebec "
         "romeo sierra tango uniform victor whiskey xray yankee zulu backup restore postgres docker container stream "
         "compress upload object bucket partition commit deploy service health check asset sensor schedule network "
         "volume secret config layer ingress proxy metric alert dashboard query index table column row value vacuum "
         "replica snapshot").split()
DOCS_SQL = """
create temp table vocab as select array[{words}]::text[] as w;
insert into docs select i, 'doc ' || i || ' ' || md5(i::text),
  (select string_agg(vv.w[1 + floor(random() * {n})::int], ' ') from vocab vv, generate_series(1, 60 + (i % 40)) g),
  jsonb_build_object('id', i, 'owner', 'user' || (random() * 5000)::int, 'hash', md5(random()::text),
                     'score', round((random() * 1000)::numeric, 2),
                     'created', now() - (random() * interval '900 days'))
from generate_series({lo}, {hi}) s(i);
"""
PGBENCH_BYTES_PER_SCALE = 16.1e6  # on disk, accounts + branches + tellers + history + primary keys
PGBENCH_SHARE = 0.2  # of the database size; the rest is docs rows


# -- measuring helpers ------------------------------------------------------------------------------------------------
def vm(field_name: str) -> float:
    """VmRSS / VmHWM of this process, MB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


class Timed:
    """An iterator that adds up the time spent inside the wrapped iterator's __next__."""

    def __init__(self, it):
        self.it, self.s, self.items = iter(it), 0.0, 0

    def __iter__(self):
        return self

    def __next__(self):
        t0 = time.perf_counter()
        try:
            item = next(self.it)
        finally:
            self.s += time.perf_counter() - t0
        self.items += 1
        return item


TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            parts = fh.read().rsplit(")", 1)[1].split()
        return (int(parts[11]) + int(parts[12])) / TICK
    except (OSError, IndexError, ValueError):
        return 0.0


def docker_daemons() -> dict[int, str]:
    """dockerd, containerd and the shims ("docker"); fuse-overlayfs, which serves container file systems when
    that is the Engine's storage driver ("fuse")."""
    pids = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as fh:
                    comm = fh.read().strip()
            except OSError:
                continue
            if comm in ("dockerd", "containerd") or comm.startswith("containerd-shim"):
                pids[int(entry)] = "docker"
            elif comm.startswith("fuse-overlayfs"):
                pids[int(entry)] = "fuse"
    return pids


def container_cpu(container_id: str) -> float:
    """CPU seconds used by the processes of a container (cgroup v1 or v2); 0 when the cgroup cannot be read."""
    for path, kind in ((f"/sys/fs/cgroup/cpuacct/docker/{container_id}/cpuacct.usage", "ns"),
                       (f"/sys/fs/cgroup/system.slice/docker-{container_id}.scope/cpu.stat", "v2"),
                       (f"/sys/fs/cgroup/docker/{container_id}/cpu.stat", "v2")):
        try:
            with open(path) as fh:
                text = fh.read()
        except OSError:
            continue
        if kind == "ns":
            return int(text.strip()) / 1e9
        match = re.search(r"usage_usec (\d+)", text)
        if match:
            return int(match.group(1)) / 1e6
    return 0.0


def host_busy() -> float:
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / TICK


@dataclass
class CpuSnap:
    t: float
    host: float
    moto: float
    daemons: dict
    containers: dict

    @classmethod
    def take(cls, moto_pid: int, container_ids: dict) -> "CpuSnap":
        return cls(time.perf_counter(), host_busy(), proc_cpu(moto_pid),
                   {p: (kind, proc_cpu(p)) for p, kind in docker_daemons().items()},
                   {name: container_cpu(cid) for name, cid in container_ids.items()})


def cpu_split(before: CpuSnap, after: CpuSnap, own_child_s: float = 0.0, host_side_s: float = 0.0) -> dict:
    """CPU seconds between two snapshots: each party, and 'other' = the machine's busy time not accounted for
    (concurrent test runs, the kernel's share of our I/O)."""
    daemons = {"docker": 0.0, "fuse": 0.0}
    for p, (kind, value) in after.daemons.items():
        daemons[kind] += value - before.daemons.get(p, (kind, 0.0))[1]
    containers = {n: after.containers[n] - before.containers.get(n, 0.0) for n in after.containers}
    out = {"wall": after.t - before.t, "busy": after.host - before.host, "moto": after.moto - before.moto,
           "docker": daemons["docker"], "fuse-overlayfs": daemons["fuse"], "child": own_child_s,
           "host_tools": host_side_s, **{f"ct:{n}": v for n, v in containers.items()}}
    out["other"] = (out["busy"] - out["moto"] - sum(daemons.values()) - own_child_s - host_side_s
                    - sum(containers.values()))
    return out


def fmt_cpu(split: dict) -> str:
    parts = [f"{k[3:] if k.startswith('ct:') else k} {v:.1f}" for k, v in split.items()
             if k not in ("wall", "busy") and abs(v) >= 0.05]
    cores = os.cpu_count() or 1
    return (f"CPU s over {split['wall']:.1f} s wall: " + ", ".join(parts)
            + f" (machine {100 * split['busy'] / (split['wall'] * cores):.0f}% busy of {cores} cores)")


# -- children: the measured steps, in their own process ----------------------------------------------------------------
def _store(p: dict):
    from prodg_assets.backups.store import BackupStore

    return BackupStore(endpoint_url=p["endpoint"], region="us-east-1", bucket=p["bucket"], access_key_id=KEY_ID,
                       secret_access_key=SECRET, part_size_mb=p.get("part_size_mb", 16))


def _s3_timer(store) -> dict:
    calls: dict = defaultdict(lambda: [0, 0.0])
    started: dict = {}

    def before(model, **_):
        started[model.name] = time.perf_counter()

    def after(model, **_):
        entry = calls[model.name]
        entry[0] += 1
        entry[1] += time.perf_counter() - started.pop(model.name, time.perf_counter())

    store.client.meta.events.register("before-call.s3", before)
    store.client.meta.events.register("after-call.s3", after)
    return calls


def _profiled(fn, enabled: bool):
    if not enabled:
        return fn()
    import cProfile
    import pstats

    prof = cProfile.Profile()
    try:
        return prof.runcall(fn)
    finally:
        stats = pstats.Stats(prof, stream=sys.stderr)
        stats.sort_stats("tottime").print_stats(18)


def child_backup(p: dict) -> dict:
    import docker

    from prodg_assets.backups.pipeline import pg_dumpall_chunks, stream_backup

    api = docker.from_env().api
    store = _store(p)
    calls = _s3_timer(store)
    rss_ready = vm("VmRSS")
    producer = Timed(pg_dumpall_chunks(api, p["container"], password=p["password"]))
    t0 = time.perf_counter()
    result = _profiled(lambda: stream_backup(store, p["key"], producer, "zstd", {"source": p["container"]}),
                       p.get("profile", False))
    wall = time.perf_counter() - t0
    return {"wall": wall, "duration_s": result.duration_s, "raw": result.raw_bytes, "stored": result.bytes,
            "sha256": result.sha256, "producer_s": producer.s, "chunks": producer.items,
            "s3": {k: v for k, v in calls.items()}, "rss_ready_mb": rss_ready, "hwm_mb": vm("VmHWM")}


def child_stream(p: dict) -> dict:
    """Diagnostic: pg_dumpall's output streamed out of the container through the exec API, and dropped."""
    import docker

    from prodg_assets.backups.pipeline import pg_dumpall_chunks

    api = docker.from_env().api
    t0 = time.perf_counter()
    total = sum(len(c) for c in pg_dumpall_chunks(api, p["container"], password=p["password"]))
    return {"wall": time.perf_counter() - t0, "raw": total}


def child_restore(p: dict) -> dict:
    import docker

    from prodg_assets.backups import restore
    from prodg_assets.backups.pipeline import ContainerExec
    from prodg_assets.backups.store import BackupStore

    api = docker.from_env().api
    store = _store(p)
    timers = {"download": None, "send_s": 0.0, "sends": 0, "last_send_end": 0.0}
    original_download, original_send = BackupStore.download, ContainerExec.send

    def download(self, key, chunk_size=1024 * 1024):
        timers["download"] = Timed(original_download(self, key, chunk_size))
        return timers["download"]

    def send(self, data):
        t0 = time.perf_counter()
        try:
            original_send(self, data)
        finally:
            timers["last_send_end"] = time.perf_counter()
            timers["send_s"] += timers["last_send_end"] - t0
            timers["sends"] += 1

    BackupStore.download, ContainerExec.send = download, send
    rss_ready = vm("VmRSS")
    t0 = time.perf_counter()
    result = _profiled(lambda: restore.restore_object(store, p["key"], p["sha256"], api, p["container"],
                                                      verify_first=False), p.get("profile", False))
    t_end = time.perf_counter()
    wall = t_end - t0
    download_s = timers["download"].s if timers["download"] else 0.0
    BackupStore.download, ContainerExec.send = original_download, original_send
    t1 = time.perf_counter()
    restore.verify_object(store, p["key"], p["sha256"])  # what verify_first=True (the CLI's default) adds
    verify_s = time.perf_counter() - t1
    return {"wall": wall, "duration_s": result.duration_s, "sql_bytes": result.sql_bytes,
            "ignored_errors": result.ignored_errors, "download_s": download_s, "send_s": timers["send_s"],
            "sends": timers["sends"], "tail_s": t_end - timers["last_send_end"], "verify_first_s": verify_s, "rss_ready_mb": rss_ready, "hwm_mb": vm("VmHWM")}


CHILDREN = {"backup": child_backup, "stream": child_stream, "restore": child_restore}


def child_main(kind: str, params: str) -> None:
    result = CHILDREN[kind](json.loads(params))
    print("RESULT " + json.dumps(result), flush=True)


# -- parent side --------------------------------------------------------------------------------------------------------
@dataclass
class ChildRun:
    result: dict
    maxrss_mb: float
    cpu_s: float
    wall: float
    stderr: str


def run_child(kind: str, params: dict, timeout_s: float, tmp: str) -> ChildRun:
    out_path, err_path = os.path.join(tmp, f"{kind}.out"), os.path.join(tmp, f"{kind}.err")
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child", kind, json.dumps(params)],
                                stdout=out, stderr=err, cwd=ROOT)
    t0 = time.perf_counter()
    deadline = time.monotonic() + timeout_s
    timed_out = False
    try:
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                timed_out = True
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
    except BaseException:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        raise
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    stdout = open(out_path, encoding="utf-8", errors="replace").read()
    stderr = open(err_path, encoding="utf-8", errors="replace").read()
    line = next((ln for ln in stdout.splitlines() if ln.startswith("RESULT ")), None)
    if timed_out or proc.returncode != 0 or line is None:
        why = f"timed out after {timeout_s:.0f}s" if timed_out else f"exited with {proc.returncode}"
        raise RuntimeError(f"{kind} child {why}: {stderr.strip()[-2500:]}")
    return ChildRun(json.loads(line[7:]), usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime, wall, stderr)


def sh(cmd: list[str], timeout_s: float, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, input=stdin, capture_output=True, timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])}… exited {proc.returncode}: "
                           f"{proc.stderr.decode('utf-8', 'replace')[-1500:]}")
    return proc


def psql(container: str, sql: str, db: str = "bench", timeout_s: float = 900) -> str:
    return sh(["docker", "exec", "-i", "-u", "postgres", container, "psql", "-X", "-q", "-A", "-t", "-v",
               "ON_ERROR_STOP=1", "-d", db], timeout_s, sql.encode()).stdout.decode().strip()


def timed_exec(container: str, script: str, timeout_s: float) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = sh(["docker", "exec", "-u", "postgres", container, "bash", "-c", "set -o pipefail; " + script], timeout_s)
    return time.perf_counter() - t0, proc.stdout.decode().strip()


@dataclass
class Built:
    db_bytes: int  # pg_database_size of every database, summed (what pg_dumpall dumps)
    bench_bytes: int
    scale: int
    docs_rows: int
    docs_gzip_ratio: float
    build_s: float


RANDOM_BASE_BYTES = 320 * 1024 ** 2  # database size reached with freshly generated docs rows; the rest is copies
BUILD_SETTINGS = {"fsync": "off", "full_page_writes": "off", "synchronous_commit": "off"}


def build(container: str, target_bytes: float, docs_rows_before: int, workers: int = 2) -> Built:
    """Grow the bench database to `target_bytes`. The first size: pgbench tables at about a fifth of it, then docs
    rows of random words generated server-side until RANDOM_BASE_BYTES. Then (and for every later size) the docs
    table doubles by copying its rows under new ids (INSERT … SELECT, `workers` in parallel) until the size is
    reached — a copy sits hundreds of MB from its original, far outside gzip's 32 KiB and zstd-3's window, so the
    compression ratios stay those of the random rows. fsync and full-page writes are off while growing (restored
    after), then VACUUM FREEZE ANALYZE and a CHECKPOINT, so that every measured dump reads settled pages."""
    t0 = time.perf_counter()
    scale = max(1, round(PGBENCH_SHARE * target_bytes / PGBENCH_BYTES_PER_SCALE))
    psql(container, "".join(f"alter system set {k} = {v};" for k, v in BUILD_SETTINGS.items())
         + "select pg_reload_conf();")
    if docs_rows_before == 0:
        sh(["docker", "exec", "-u", "postgres", container, "pgbench", "-i", "-q", "-s", str(scale), "-I", "dtGvp",
            "bench"], 1800)
    else:
        scale = int(psql(container, "select count(*) from pgbench_branches"))
    psql(container, "create table if not exists docs (id bigint primary key, title text, body text, meta jsonb);")
    rows = docs_rows_before
    words = ",".join(f"'{w}'" for w in WORDS)

    def parallel(statements: list[str]) -> None:
        errors: list[BaseException] = []

        def one(sql: str) -> None:
            try:
                psql(container, sql, timeout_s=1800)
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=one, args=(sql,)) for sql in statements]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        if errors:
            raise errors[0]

    while True:
        size = int(psql(container, "select sum(pg_database_size(datname)) from pg_database"))
        if size >= 0.985 * target_bytes:
            break
        per_row = 830.0
        if rows:
            per_row = int(psql(container, "select pg_total_relation_size('docs')")) / rows
        need = int((target_bytes - size) / per_row) + 1
        if size < RANDOM_BASE_BYTES and rows < 2_000_000:
            batch = min(need, int((RANDOM_BASE_BYTES - size) / per_row) + 1, 300_000 * workers)
            step = (batch + workers - 1) // workers
            parallel([DOCS_SQL.format(words=words, n=len(WORDS), lo=rows + 1 + k * step,
                                      hi=min(rows + (k + 1) * step, rows + batch))
                      for k in range(workers) if k * step < batch])
        else:
            batch = min(need, rows)
            step = (batch + workers - 1) // workers
            parallel([f"insert into docs select id + {rows}, title, body, meta from docs "
                      f"where id > {k * step} and id <= {min((k + 1) * step, batch)};"
                      for k in range(workers) if k * step < batch])
        rows += batch
    psql(container, "".join(f"alter system reset {k};" for k in BUILD_SETTINGS) + "select pg_reload_conf();")
    psql(container, "vacuum (freeze, analyze); checkpoint;", timeout_s=1800)
    copy = "psql -X -q -d bench -c 'copy (select * from docs order by id limit 50000) to stdout'"
    _, raw_sample = timed_exec(container, f"{copy} | wc -c", 600)
    _, gz_sample = timed_exec(container, f"{copy} | gzip | wc -c", 600)
    raw_sample, gz_sample = int(raw_sample.split()[-1]), int(gz_sample.split()[-1])
    size = int(psql(container, "select sum(pg_database_size(datname)) from pg_database"))
    bench = int(psql(container, "select pg_database_size('bench')"))
    return Built(size, bench, scale, rows, raw_sample / max(gz_sample, 1), time.perf_counter() - t0)


def wait_pg(client, name: str) -> None:
    from prodg_assets.backups.restore import wait_ready

    wait_ready(client.api, name)


def fmt_s(s: float) -> str:
    return f"{s:.1f} s" if s < 100 else f"{s:.0f} s"


def mbps(raw: int, s: float) -> str:
    return f"{raw / MB / s:.0f} MB/s" if s > 0 else "—"


@dataclass
class SizeResult:
    label: str
    rows: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    rss_mb: float = 0.0


def measure_size(size_gib: float, full: bool, args, client, moto, src: str, src_id: str, docs_rows: int,
                 tmp: str) -> tuple[SizeResult, int]:
    """One size. `full`: the backup against both baselines, `repeats` times, the compressed sizes, the streaming
    diagnostics and the restore. Otherwise (the large size, for the memory figure): the backup once between two
    `pg_dumpall > /dev/null`, nothing else."""
    from prodg_assets.backups.pipeline import census, postgres_key
    from prodg_assets.backups.restore import compare_census, scratch_postgres
    from prodg_assets.backups.store import BackupStore

    out = SizeResult(f"{size_gib:g} GiB")
    print(f"\n== {out.label}: building …", flush=True)
    built = build(src, size_gib * GIB, docs_rows)
    label = out.label = f"{size_gib:g} GiB (db {built.db_bytes / GIB:.2f} GiB)"
    print(f"   built in {built.build_s:.0f} s: pg_database_size {built.db_bytes / MB:.0f} MB over all databases "
          f"({built.bench_bytes / MB:.0f} MB in bench: pgbench scale {built.scale} + {built.docs_rows} docs rows); "
          f"docs table compresses {built.docs_gzip_ratio:.2f}× with gzip", flush=True)
    expected = census(client.api, src) if full else None
    step_timeout = 300 + 900 * size_gib
    params = {"endpoint": moto.url, "bucket": BUCKET, "container": src, "password": PASSWORD,
              "part_size_mb": args.part_size_mb}
    ids = {"src": src_id}
    store = BackupStore(endpoint_url=moto.url, region="us-east-1", bucket=BUCKET, access_key_id=KEY_ID,
                        secret_access_key=SECRET)
    snap = lambda which=None: CpuSnap.take(moto.proc.pid, which or ids)  # noqa: E731
    timed_exec(src, "pg_dumpall -U postgres > /dev/null", step_timeout)  # warm-up, not counted

    def plain_dump() -> None:
        s0 = snap()
        t, _ = timed_exec(src, "pg_dumpall -U postgres > /dev/null", step_timeout)
        plain.append((t, cpu_split(s0, snap())))

    # -- backup: baseline A, the pipeline, baseline B (the seed's gzip, once), interleaved --------------------------
    plain, gz, pipe = [], [], []
    gz_bytes = 0
    today = datetime.date.today().isoformat()
    repeats = args.repeats if full else 1
    for r in range(repeats):
        plain_dump()
        key = postgres_key(f"bench-{size_gib:g}gib-r{r}/", today, datetime.datetime.now(datetime.timezone.utc),
                           "zstd")
        s0 = snap()
        run = run_child("backup", {**params, "key": key, "profile": args.profile and r == 0}, step_timeout, tmp)
        pipe.append((run, cpu_split(s0, snap(), run.cpu_s), key))
        if args.profile and r == 0:
            print("   cProfile of the backup child (tottime):\n" + run.stderr[-6000:], flush=True)
        if full and r == 0:
            s0 = snap()
            t, size_out = timed_exec(src, "pg_dumpall -U postgres | gzip > /tmp/bench-dump.sql.gz && "
                                          "stat -c %s /tmp/bench-dump.sql.gz && rm -f /tmp/bench-dump.sql.gz",
                                     step_timeout)
            gz.append((t, cpu_split(s0, snap())))
            gz_bytes = int(size_out.split()[-1])
        elif not full:
            plain_dump()
        print(f"   backup repeat {r + 1}: pg_dumpall>/dev/null {plain[-1][0]:.1f} s, postgres_backup "
              f"{run.result['wall']:.1f} s (peak RSS {run.maxrss_mb:.0f} MB)"
              + (f", pg_dumpall|gzip {gz[-1][0]:.1f} s" if gz and r == 0 else ""), flush=True)
    if len(plain) < 2:
        plain_dump()  # the baseline is always the best of at least two dumps (the first after a build varies most)
    best_plain = min(plain, key=lambda x: x[0])
    run, run_cpu, key = min(pipe, key=lambda x: x[0].result["wall"])
    res = run.result
    raw, stored, wall = res["raw"], res["stored"], res["wall"]
    rss = max(p[0].maxrss_mb for p in pipe)
    out.rss_mb = rss
    best = f"best of {repeats}" if repeats > 1 else "one run"
    ratio_a = wall / best_plain[0]
    out.rows.append(
        (f"postgres_backup wall, {label} → {raw / MB:.0f} MB dump ({best})", f"{fmt_s(wall)} ({mbps(raw, wall)})",
         f"pg_dumpall > /dev/null {fmt_s(best_plain[0])} ({mbps(raw, best_plain[0])}, best of {len(plain)})",
         f"{ratio_a:.2f}×", "≤ 1.15×"))
    if full:
        best_gz = gz[0]
        out.rows += [
            (f"postgres_backup wall vs the seed's gzip, {label}", fmt_s(wall),
             f"pg_dumpall \\| gzip {fmt_s(best_gz[0])} ({mbps(raw, best_gz[0])})", f"{wall / best_gz[0]:.2f}×",
             "≤ 0.6×"),
            (f"compressed size, {label}", f"zstd-{ZSTD_LEVEL} {stored / MB:.1f} MB ({raw / stored:.2f}×)",
             f"gzip -6 {gz_bytes / MB:.1f} MB ({raw / gz_bytes:.2f}×)", f"{stored / gz_bytes:.3f}×",
             "≤ 1.0× (≤ gzip)")]
    out.rows.append(
        (f"peak RSS of the backup process, {label}", f"{rss:.0f} MB", f"{res['rss_ready_mb']:.0f} MB after imports",
         f"+{rss - res['rss_ready_mb']:.0f} MB", f"≤ {RSS_TARGET_MB} MB, flat with size"))
    s3 = res["s3"]
    s3_total = sum(v[1] for v in s3.values())
    s3_text = ", ".join(f"{k} {v[0]}× {v[1]:.1f} s" for k, v in sorted(s3.items(), key=lambda kv: -kv[1][1]))
    out.notes.append(
        f"backup {label}: zstd-{ZSTD_LEVEL} {raw / stored:.2f}×"
        + (f", gzip {raw / gz_bytes:.2f}× (mix aimed at 3–5×; docs table alone {built.docs_gzip_ratio:.2f}×)"
           if full else "")
        + f". pg_dumpall itself: {mbps(raw, best_plain[0])} into /dev/null in its container. Inside the backup's "
        f"{fmt_s(wall)}: the consumer waited {res['producer_s']:.1f} s for pg_dumpall output "
        f"({res['chunks']} chunks, {raw / max(res['chunks'], 1) / 1024:.0f} KiB each); S3 calls to moto "
        f"{s3_total:.1f} s ({s3_text}). Backup: {fmt_cpu(run_cpu)}. pg_dumpall > /dev/null: "
        f"{fmt_cpu(best_plain[1])}." + (f" pg_dumpall | gzip: {fmt_cpu(gz[0][1])}." if full else ""))
    if full:
        # diagnostics: the dump streamed out through the exec API into Python (dropped), and through the docker CLI
        s0 = snap()
        stream = run_child("stream", params, step_timeout, tmp)
        stream_cpu = cpu_split(s0, snap(), stream.cpu_s)
        t0 = time.perf_counter()
        with open(os.devnull, "wb") as null:
            subprocess.run(["docker", "exec", "-u", "postgres", src, "pg_dumpall", "-U", "postgres"], stdout=null,
                           check=True, timeout=step_timeout)
        cli_stream_s = time.perf_counter() - t0
        s3_tail = sum(v[1] for k, v in res["s3"].items() if k in ("CompleteMultipartUpload", "CopyObject"))
        out.rows.append(
            (f"postgres_backup wall vs the Engine's exec stream alone, {label}", fmt_s(wall),
             f"pg_dumpall through the exec API, dropped {fmt_s(stream.result['wall'])}",
             f"{wall / stream.result['wall']:.2f}×",
             f"— (the store's completion: {s3_tail:.1f} s)"))
        out.notes.append(
            f"backup {label}: streamed out through the Engine's exec API into Python and dropped: "
            f"{fmt_s(stream.result['wall'])} ({stream.result['wall'] / best_plain[0]:.2f}× of pg_dumpall > "
            f"/dev/null; {fmt_cpu(stream_cpu)}); through `docker exec … > /dev/null` on the host: "
            f"{fmt_s(cli_stream_s)} ({cli_stream_s / best_plain[0]:.2f}×).")
        if ratio_a > 1.15:
            out.notes.append(diagnose_backup(label, ratio_a, wall, best_plain[0], stream.result["wall"],
                                             cli_stream_s, res, s3, s3_total, run_cpu))
    if rss > RSS_TARGET_MB:
        out.notes.append(f"backup {label}: peak RSS {rss:.0f} MB exceeds {RSS_TARGET_MB} MB "
                         f"({res['rss_ready_mb']:.0f} MB of it is the interpreter with boto3, docker and zstandard "
                         f"loaded; the part buffer is {args.part_size_mb} MiB).")
    if not full or args.restore_repeats < 1:
        store.delete_objects([p[2] for p in pipe])
        return out, built.docs_rows

    # -- restore: restore_object into an empty scratch Postgres vs `zstd -dc | psql`, order alternating -------------
    sha = res["sha256"]
    restore_timeout = 600 + 1200 * size_gib
    dump_path = os.path.join(tmp, "dump.sql.zst")
    with open(dump_path, "wb") as fh:  # for the baseline only, not timed
        for chunk in store.download(key):
            fh.write(chunk)
    pipes, bases = [], []
    for r in range(args.restore_repeats):
        for which in (("pipeline", "baseline") if r % 2 == 0 else ("baseline", "pipeline")):
            with scratch_postgres(client, IMAGE, f"{NAME}-r{1 if which == 'pipeline' else 2}") as scratch:
                which_ids = {"src": src_id, "scratch": client.containers.get(scratch).id}
                s0 = snap(which_ids)
                if which == "pipeline":
                    rr = run_child("restore", {**params, "container": scratch, "key": key, "sha256": sha,
                                               "profile": args.profile and r == 0}, restore_timeout, tmp)
                    pipes.append((rr, cpu_split(s0, snap(which_ids), rr.cpu_s),
                                  compare_census(expected, census(client.api, scratch))))
                    if args.profile and r == 0:
                        print("   cProfile of the restore child (tottime):\n" + rr.stderr[-6000:], flush=True)
                else:
                    t_base, errors, host_tools = baseline_restore(dump_path, scratch, restore_timeout)
                    bases.append((t_base, cpu_split(s0, snap(which_ids), host_side_s=host_tools), errors,
                                  compare_census(expected, census(client.api, scratch))))
        print(f"   restore repeat {r + 1}: restore_object {pipes[-1][0].result['wall']:.1f} s, zstd -dc | psql "
              f"{bases[-1][0]:.1f} s", flush=True)
    os.unlink(dump_path)
    store.delete_objects([p[2] for p in pipe])
    rr, rr_cpu, findings = min(pipes, key=lambda x: x[0].result["wall"])
    base_restore, base_cpu, base_errors, base_findings = min(bases, key=lambda x: x[0])
    rres = rr.result
    ratio_r = rres["wall"] / base_restore
    best = f"best of {args.restore_repeats}" if args.restore_repeats > 1 else "one run each"
    out.rows.append(
        (f"restore_object into an empty Postgres, {label} ({rres['sql_bytes'] / MB:.0f} MB SQL, {best})",
         f"{fmt_s(rres['wall'])} ({mbps(rres['sql_bytes'], rres['wall'])})",
         f"zstd -dc \\| psql {fmt_s(base_restore)} ({mbps(rres['sql_bytes'], base_restore)})", f"{ratio_r:.2f}×",
         "≤ 1.2×"))
    own = rres["wall"] - rres["send_s"] - rres["tail_s"]
    census_text = "matches" if not findings else "DIFFERS: " + "; ".join(findings[:3])
    base_census = "matches" if not base_findings else "DIFFERS: " + "; ".join(base_findings[:3])
    out.notes.append(
        f"restore {label}: census after restore_object {census_text} (after the baseline: {base_census}; baseline "
        f"psql printed {len(base_errors)} ERROR line(s){', e.g. ' + base_errors[0].strip()[:70] if base_errors else ''}"
        f"; restore_object ignored {rres['ignored_errors']}). Of restore_object's {fmt_s(rres['wall'])}: "
        f"{rres['send_s']:.1f} s blocked writing to psql's stdin ({rres['sends']} writes, "
        f"{rres['sql_bytes'] / max(rres['sends'], 1) / MB:.1f} MB each on average), {rres['tail_s']:.1f} s from the "
        f"last write until psql finished, {own:.1f} s of its own serial work (download from moto "
        f"{rres['download_s']:.1f} s, zstd decompression, sha256, the emptiness check); peak RSS {rr.maxrss_mb:.0f} MB. "
        f"restore_object: {fmt_cpu(rr_cpu)}. Baseline: {fmt_cpu(base_cpu)}. verify_first=True (the CLI's default) "
        f"adds a verifying download: {rres['verify_first_s']:.1f} s.")
    if ratio_r > 1.2:
        pg_time = rres["send_s"] + rres["tail_s"]
        out.notes.append(
            f"restore {label} misses ≤ 1.2× ({ratio_r:.2f}×): restore_object's own serial work is {own:.1f} s "
            f"({own / base_restore:.2f}× of the baseline); psql/Postgres took {pg_time:.1f} s of it vs the whole "
            f"{fmt_s(base_restore)} of the baseline. The difference in the Postgres part comes from the machine "
            f"(the scratch Postgres writes through {STORAGE['driver']}; other processes used "
            f"{rr_cpu.get('other', 0):.0f} vs {base_cpu.get('other', 0):.0f} CPU s during the two runs) and from "
            f"feeding psql in large writes from one thread that also downloads and decompresses.")
    return out, built.docs_rows


STORAGE = {"driver": "?"}


def baseline_restore(dump_path: str, scratch: str, timeout_s: float) -> tuple[float, list[str], float]:
    """`zstd -dc dump | docker exec -i <scratch> psql`: (seconds, psql's ERROR lines, CPU s of zstd + docker CLI)."""
    before = os.times()
    t0 = time.perf_counter()
    zst = subprocess.Popen(["zstd", "-dc", dump_path], stdout=subprocess.PIPE)
    try:
        ps = subprocess.run(["docker", "exec", "-i", "-u", "postgres", scratch, "psql", "-X", "-q", "-U", "postgres",
                             "-d", "postgres", "-o", "/dev/null"], stdin=zst.stdout, capture_output=True,
                            timeout=timeout_s)
    finally:
        zst.stdout.close()
        if zst.poll() is None:
            zst.kill()
        zst.wait()
    elapsed = time.perf_counter() - t0
    after = os.times()
    if ps.returncode != 0 or zst.returncode != 0:
        raise RuntimeError(f"baseline restore: zstd exited {zst.returncode}, psql {ps.returncode}: "
                           f"{ps.stderr.decode('utf-8', 'replace')[-800:]}")
    errors = [ln for ln in ps.stderr.decode("utf-8", "replace").splitlines() if "ERROR:" in ln]
    host = (after.children_user + after.children_system) - (before.children_user + before.children_system)
    return elapsed, errors, host


def diagnose_backup(label, ratio, wall, plain_s, stream_s, cli_s, res, s3, s3_total, cpu) -> str:
    parts = [f"getting pg_dumpall's output out of the container through dockerd's exec stream is the first limit: "
             f"{stream_s / plain_s:.2f}× of pg_dumpall > /dev/null even with nothing done to the bytes "
             f"(the docker CLI: {cli_s / plain_s:.2f}×), {res['producer_s']:.1f} s of the backup waiting for frames, "
             f"dockerd/containerd {cpu.get('docker', 0):.1f} CPU s"]
    if s3_total > 0.1 * wall:
        moto_only = sum(v[1] for k, v in s3.items() if k in ("CompleteMultipartUpload", "CopyObject"))
        parts.append(f"the S3 calls ({s3_total:.1f} s: UploadPart in a thread of its own while the next part is "
                     f"compressed, then, after the last byte, {moto_only:.1f} s of moto_server assembling the parts "
                     f"on CompleteMultipartUpload and copying the object onto itself to set the sha256 metadata; "
                     f"moto used {cpu.get('moto', 0):.1f} CPU s)")
    cores = os.cpu_count() or 1
    if cpu["busy"] > 0.85 * cpu["wall"] * cores:
        parts.append(f"and the {cores} cores were {100 * cpu['busy'] / (cpu['wall'] * cores):.0f}% busy "
                     f"(processes outside the backup, e.g. concurrent test runs: {cpu.get('other', 0):.1f} CPU s)")
    return f"backup {label} misses ≤ 1.15× ({ratio:.2f}×; target {1.15 * plain_s:.1f} s): " + "; ".join(parts) + "."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1,4", help="database sizes in GiB, comma-separated (default 1,4)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="backups and pg_dumpall baselines per fully measured size (best counts)")
    parser.add_argument("--restore-repeats", type=int, default=1, help="restores and restore baselines per size")
    parser.add_argument("--full-up-to", type=float, default=1.0,
                        help="sizes up to this (GiB) get every figure; larger ones only the backup's wall and "
                             "peak RSS against pg_dumpall > /dev/null (default 1)")
    parser.add_argument("--part-size-mb", type=int, default=16, help="the store's multipart part size (default 16)")
    parser.add_argument("--profile", action="store_true", help="cProfile the backup and restore children")
    parser.add_argument("--no-record", action="store_true", help="print only; append nothing to bench/RESULTS.md")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(*args.child)
        return
    sizes = sorted(float(s) for s in args.sizes.split(",") if s.strip())

    import boto3
    import docker

    from bench.common import append_result, machine
    from tests.standins.moto import MotoServer

    def on_term(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    started = time.perf_counter()
    client = docker.from_env()
    tmp = tempfile.mkdtemp(prefix="prodg-bench-backup-")
    moto = MotoServer()
    containers = [f"{NAME}-src", f"{NAME}-r1", f"{NAME}-r2"]
    results: list[SizeResult] = []
    try:
        moto.start()
        boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1", aws_access_key_id=KEY_ID,
                     aws_secret_access_key=SECRET).create_bucket(Bucket=BUCKET)
        src = containers[0]
        container = client.containers.run(IMAGE, detach=True, name=src, network_mode="none",
                                          environment={"POSTGRES_PASSWORD": PASSWORD},
                                          labels={"prodg.bench": NAME})
        wait_pg(client, src)
        STORAGE["driver"] = f"the Engine's {client.info().get('Driver', '?')} storage driver"
        psql(src, "create database bench;", db="postgres")
        docs_rows = 0
        for size in sizes:
            try:
                res, docs_rows = measure_size(size, size <= args.full_up_to, args, client, moto, src, container.id,
                                              docs_rows, tmp)
            except Exception as exc:  # noqa: BLE001 — report the size as failed, keep the sizes measured
                print(f"   {size:g} GiB failed: {exc}", flush=True)
                res = SizeResult(f"{size:g} GiB", rows=[(f"{size:g} GiB", "failed", str(exc)[:200].replace("|", "/"),
                                                         "—", "—")])
                results.append(res)
                break
            results.append(res)
        rss = [r.rss_mb for r in results if r.rss_mb]
        rows = [row for r in results for row in r.rows]
        if len(rss) > 1:
            rows.append(("peak RSS growth from the smallest to the largest size", f"{rss[-1] - rss[0]:+.0f} MB",
                         " / ".join(f"{v:.0f} MB" for v in rss), "—", "not growing with size"))
        total = time.perf_counter() - started
        print(f"\n{'figure':<78} {'measured':>18}  {'baseline':<38} {'ratio':>7}  target")
        for row in rows:
            print(f"{row[0]:<78} {row[1]:>18}  {row[2].replace(chr(92), ''):<38} {row[3]:>7}  {row[4]}")
        print(f"\nmachine: {machine()}, {STORAGE['driver']}; run took {total / 60:.1f} min; other processes may "
              f"share the CPU (see the 'other' CPU seconds below)\nnotes:")
        for r in results:
            for note in r.notes:
                print(f"- {note}")
        if rows and not args.no_record:
            append_result("backup_throughput", rows)
    finally:
        for name in containers:
            try:
                client.containers.get(name).remove(force=True, v=True)
            except docker.errors.NotFound:
                pass
            except Exception as exc:  # keep cleaning up
                print(f"could not remove {name}: {exc}", file=sys.stderr)
        moto.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
