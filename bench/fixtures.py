"""Set-ups for the benchmarks: commands in a container (psql, a timed script, `zstd -dc | psql`), a Postgres container
grown to a given size with mixed data, moto_server with a bucket, removal of the bench's containers, a step run in a
fresh process whose peak RSS and CPU seconds come from wait4, and `Setup`, which runs a step with the machine's CPU
seconds split over it."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Iterator

import boto3

import docker
from bench.measure import CpuSnap, cpu_split
from prodg_assets.backups.restore.postgres import wait_ready
from tests.standins.moto import MotoServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- commands in a container ------------------------------------------------------------------------------------------
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
    """(seconds, stdout) of a bash script run as postgres in the container (the docker CLI's own start included)."""
    t0 = time.perf_counter()
    proc = sh(["docker", "exec", "-u", "postgres", container, "bash", "-c", "set -o pipefail; " + script], timeout_s)
    return time.perf_counter() - t0, proc.stdout.decode().strip()


def psql_parallel(container: str, statements: list[str]) -> None:
    """One psql per statement, all at once; the first failure is raised after all have ended."""
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


def age_zstd_into_psql(dump_path: str, identity: str, container: str, timeout_s: float) \
        -> tuple[float, list[str], float]:
    """`age -d -i identity dump | zstd -dc | docker exec -i <scratch> psql`: (seconds, psql's ERROR lines, CPU s of
    age + zstd + docker CLI). The restore's baseline in bench/backup_throughput.py: what an operator runs by hand."""
    before = os.times()
    t0 = time.perf_counter()
    age = subprocess.Popen(["age", "--decrypt", "-i", identity, dump_path], stdout=subprocess.PIPE)
    zst = subprocess.Popen(["zstd", "-dc"], stdin=age.stdout, stdout=subprocess.PIPE)
    age.stdout.close()
    try:
        ps = subprocess.run(["docker", "exec", "-i", "-u", "postgres", container, "psql", "-X", "-q", "-U",
                             "postgres", "-d", "postgres", "-o", "/dev/null"], stdin=zst.stdout,
                            capture_output=True, timeout=timeout_s)
    finally:
        zst.stdout.close()
        for proc in (zst, age):
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    elapsed = time.perf_counter() - t0
    after = os.times()
    if ps.returncode != 0 or zst.returncode != 0 or age.returncode != 0:
        raise RuntimeError(f"baseline restore: age exited {age.returncode}, zstd {zst.returncode}, psql "
                           f"{ps.returncode}: {ps.stderr.decode('utf-8', 'replace')[-800:]}")
    errors = [ln for ln in ps.stderr.decode("utf-8", "replace").splitlines() if "ERROR:" in ln]
    host = (after.children_user + after.children_system) - (before.children_user + before.children_system)
    return elapsed, errors, host


# -- a Postgres of a given size ---------------------------------------------------------------------------------------
@contextlib.contextmanager
def removed_afterwards(client, names: list[str]) -> Iterator[None]:
    """Force-removes these containers (with their volumes) when the block ends, whatever happened."""
    try:
        yield
    finally:
        for name in names:
            try:
                client.containers.get(name).remove(force=True, v=True)
            except docker.errors.NotFound:
                pass
            except Exception as exc:  # keep cleaning up
                print(f"could not remove {name}: {exc}", file=sys.stderr)


def start_postgres(client, image: str, name: str, password: str, label: str):
    """A Postgres container with no network (reached only through exec), ready, with an empty `bench` database."""
    container = client.containers.run(image, detach=True, name=name, network_mode="none",
                                      environment={"POSTGRES_PASSWORD": password}, labels={"prodg.bench": label})
    wait_ready(client.api, name)
    psql(name, "create database bench;", db="postgres")
    return container


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
RANDOM_BASE_BYTES = 320 * 1024 ** 2  # database size reached with freshly generated docs rows; the rest is copies
BUILD_SETTINGS = {"fsync": "off", "full_page_writes": "off", "synchronous_commit": "off"}


@dataclass
class Built:
    db_bytes: int  # pg_database_size of every database, summed (what pg_dumpall dumps)
    bench_bytes: int
    scale: int
    docs_rows: int
    docs_gzip_ratio: float
    build_s: float


def db_size(container: str) -> int:
    return int(psql(container, "select sum(pg_database_size(datname)) from pg_database"))


def build(container: str, target_bytes: float, docs_rows_before: int, workers: int = 2) -> Built:
    """Grow the bench database to `target_bytes`. The first size: pgbench tables at about a fifth of it, then docs
    rows of random words generated server-side until RANDOM_BASE_BYTES. Then (and for every later size) the docs
    table doubles by copying its rows under new ids (INSERT … SELECT, `workers` in parallel) until the size is
    reached — a copy sits hundreds of MB from its original, far outside gzip's 32 KiB and zstd-3's window, so the
    compression ratios stay those of the random rows. fsync and full-page writes are off while growing (restored
    after), then VACUUM FREEZE ANALYZE and a CHECKPOINT, so that every measured dump reads settled pages."""
    t0 = time.perf_counter()
    psql(container, "".join(f"alter system set {k} = {v};" for k, v in BUILD_SETTINGS.items())
         + "select pg_reload_conf();")
    scale = _pgbench_tables(container, target_bytes, docs_rows_before)
    psql(container, "create table if not exists docs (id bigint primary key, title text, body text, meta jsonb);")
    rows = docs_rows_before
    while (size := db_size(container)) < 0.985 * target_bytes:
        rows += _grow_docs(container, rows, size, target_bytes, workers)
    psql(container, "".join(f"alter system reset {k};" for k in BUILD_SETTINGS) + "select pg_reload_conf();")
    psql(container, "vacuum (freeze, analyze); checkpoint;", timeout_s=1800)
    gzip_ratio = _docs_gzip_ratio(container)
    return Built(db_size(container), int(psql(container, "select pg_database_size('bench')")), scale, rows,
                 gzip_ratio, time.perf_counter() - t0)


def _pgbench_tables(container: str, target_bytes: float, docs_rows_before: int) -> int:
    """pgbench -i at about PGBENCH_SHARE of the first size; later sizes keep them. Returns the scale."""
    if docs_rows_before:
        return int(psql(container, "select count(*) from pgbench_branches"))
    scale = max(1, round(PGBENCH_SHARE * target_bytes / PGBENCH_BYTES_PER_SCALE))
    sh(["docker", "exec", "-u", "postgres", container, "pgbench", "-i", "-q", "-s", str(scale), "-I", "dtGvp",
        "bench"], 1800)
    return scale


def _grow_docs(container: str, rows: int, size: int, target_bytes: float, workers: int) -> int:
    """One growing step: fresh random rows below RANDOM_BASE_BYTES, copies of existing rows above. Returns the
    number of rows added."""
    per_row = int(psql(container, "select pg_total_relation_size('docs')")) / rows if rows else 830.0
    need = int((target_bytes - size) / per_row) + 1
    if size < RANDOM_BASE_BYTES and rows < 2_000_000:
        batch = min(need, int((RANDOM_BASE_BYTES - size) / per_row) + 1, 300_000 * workers)
        step = (batch + workers - 1) // workers
        words = ",".join(f"'{w}'" for w in WORDS)
        psql_parallel(container, [DOCS_SQL.format(words=words, n=len(WORDS), lo=rows + 1 + k * step,
                                                  hi=min(rows + (k + 1) * step, rows + batch))
                                  for k in range(workers) if k * step < batch])
    else:
        batch = min(need, rows)
        step = (batch + workers - 1) // workers
        psql_parallel(container, [f"insert into docs select id + {rows}, title, body, meta from docs "
                                  f"where id > {k * step} and id <= {min((k + 1) * step, batch)};"
                                  for k in range(workers) if k * step < batch])
    return batch


def _docs_gzip_ratio(container: str) -> float:
    """gzip's ratio on the first 50,000 docs rows, as COPY text."""
    copy = "psql -X -q -d bench -c 'copy (select * from docs order by id limit 50000) to stdout'"
    _, raw_sample = timed_exec(container, f"{copy} | wc -c", 600)
    _, gz_sample = timed_exec(container, f"{copy} | gzip | wc -c", 600)
    return int(raw_sample.split()[-1]) / max(int(gz_sample.split()[-1]), 1)


# -- moto_server -------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def moto_bucket(bucket: str, key_id: str, secret: str) -> Iterator[MotoServer]:
    """moto_server started, with an empty `bucket`; stopped when the block ends."""
    moto = MotoServer()
    try:
        moto.start()
        boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1", aws_access_key_id=key_id,
                     aws_secret_access_key=secret).create_bucket(Bucket=bucket)
        yield moto
    finally:
        moto.stop()


# -- a step in a fresh process: its peak RSS and CPU seconds -----------------------------------------------------------
@dataclass
class ChildRun:
    result: dict
    maxrss_mb: float
    cpu_s: float
    stderr: str


def run_child(script: str, kind: str, params: dict, timeout_s: float, tmp: str) -> ChildRun:
    """`python script kind <params as JSON>`, which prints `RESULT <json>`: its result, peak RSS (ru_maxrss) and
    CPU seconds (from wait4) and stderr. Killed after `timeout_s`; a failure raises with its stderr."""
    out_path, err_path = os.path.join(tmp, f"{kind}.out"), os.path.join(tmp, f"{kind}.err")
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen([sys.executable, script, kind, json.dumps(params)], stdout=out, stderr=err, cwd=ROOT)
    status, usage, timed_out = _wait4(proc, timeout_s)
    code = proc.returncode = os.waitstatus_to_exitcode(status)
    stdout = open(out_path, encoding="utf-8", errors="replace").read()
    stderr = open(err_path, encoding="utf-8", errors="replace").read()
    line = next((ln for ln in stdout.splitlines() if ln.startswith("RESULT ")), None)
    if timed_out or code != 0 or line is None:
        why = f"timed out after {timeout_s:.0f}s" if timed_out else f"exited with {code}"
        raise RuntimeError(f"{kind} child {why}: {stderr.strip()[-2500:]}")
    return ChildRun(json.loads(line[7:]), usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime, stderr)


def _wait4(proc: subprocess.Popen, timeout_s: float):
    """(status, rusage, timed_out) of the child, killed once `timeout_s` has passed (or if this is interrupted)."""
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                return status, usage, False
            if time.monotonic() > deadline:
                proc.kill()
                _, status, usage = os.wait4(proc.pid, 0)
                return status, usage, True
            time.sleep(0.05)
    except BaseException:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        raise


# -- the set-up a benchmark's steps run against, each step with the machine's CPU seconds split over it ----------------
@dataclass
class Setup:
    """A source container (grown size by size), moto_server, a scratch directory and the run's options; steps run
    in a fresh process (`children`, a script taking `kind` and JSON params) or in the source container."""
    args: object
    client: object
    moto: MotoServer
    src: str
    src_id: str
    tmp: str
    store: object
    driver: str
    children: str
    child_params: dict

    def snap(self, ids: dict | None = None) -> CpuSnap:
        return CpuSnap.take(self.moto.proc.pid, ids or {"src": self.src_id})

    def child(self, kind: str, timeout_s: float, ids: dict | None = None, **params) -> tuple[ChildRun, dict]:
        """A step in a fresh process, and the machine's CPU seconds split over it."""
        s0 = self.snap(ids)
        run = run_child(self.children, kind, {**self.child_params, **params}, timeout_s, self.tmp)
        return run, cpu_split(s0, self.snap(ids), run.cpu_s)

    def in_src(self, script: str, timeout_s: float) -> tuple[float, dict, str]:
        """A script run inside the source container: (seconds, CPU split, stdout)."""
        s0 = self.snap()
        t, out = timed_exec(self.src, script, timeout_s)
        return t, cpu_split(s0, self.snap()), out
