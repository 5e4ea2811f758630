"""Backup throughput: the `postgres_backup` pipeline (pg_dumpall in a helper container → FIFO → zstd → age encryption →
multipart upload to an S3 API, here moto_server) against the same work done by the plain CLIs, against the seed's
`pg_dumpall | gzip`, its peak memory, and the restore of its object into an empty Postgres against
`age -d | zstd -dc | psql`.

The backup's target is set against the same work, measured in the same run beside it: `pg_dumpall | zstd -3 |
age -r RECIPIENT > /dev/null` (the bench's own age recipient), pg_dumpall's output taking the backup's route (a
helper container from the Postgres image, its FIFO read by pg_dumpall_chunks in a process on this machine) and
written into the zstd CLI, whose output the age CLI encrypts into /dev/null. The backup's wall must stay within
1.10× of it (SAME_WORK_TARGET): what that leaves is the store (hashing, the part buffer, the upload and the
store's completion) and doing compression and encryption in Python. The raw dump, `pg_dumpall > /dev/null` inside
the container, stays a reported row, with no target (its old target, ≤ 1.15×, set a backup that compresses and
encrypts against a dump that does neither).

For every size (--sizes, GiB; default 1,4) one Postgres container (prodg/postgres:bookworm, no network, reached only
through exec) is grown to that size with mixed data: pgbench tables (`pgbench -i`, about a fifth of the first size,
very compressible) and a `docs` table of random words and JSON generated server-side (about 3.6× with gzip) up to
320 MiB, then doubled by copying rows (see `build`), so that the whole dump compresses 3–5× with gzip. Sizes up to
--full-up-to (1 GiB) get every figure; larger ones only the backup's wall against the same work and
`pg_dumpall > /dev/null`, and its peak RSS (the memory figure must not grow with size), which keeps bench/run
short.

Beside the baselines, the backup is also set against its route alone (pg_dumpall's output read out of the helper
container's FIFO and dropped), and that route against the Engine's exec stream (the route before; still the one
for an Engine on another machine).

The backup, its same-work baseline and the restore run in child processes of this script (their peak RSS and CPU
seconds come from wait4; the same-work baseline's include its zstd and age), instrumented
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
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import docker

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.backup_notes import backup_note, diagnose_backup, restore_notes, rss_note, stream_note  # noqa: E402
from bench.backup_results import SAME_WORK_TARGET, Backups, Restores, Stream  # noqa: E402
from bench.common import append_result, machine  # noqa: E402
from bench.fixtures import (  # noqa: E402
    Built,
    ChildRun,
    Setup,
    age_zstd_into_psql,
    build,
    moto_bucket,
    removed_afterwards,
    start_postgres,
    timed_exec,
)
from bench.measure import MB, cpu_split, fmt_s, mbps  # noqa: E402
from prodg_assets.backups.capture.postgres import census
from prodg_assets.backups.format.codec import ZSTD_LEVEL
from prodg_assets.backups.proofs.drills import compare_census, scratch_postgres
from prodg_assets.backups.store.client import BackupStore
from prodg_assets.backups.store.keys import postgres_key

IMAGE = "prodg/postgres:bookworm"
PID = os.getpid()
NAME = f"prodgbench{PID}"
BUCKET = f"prodg-bench-{PID}"
KEY_ID, SECRET = "AKIDBENCH", "bench-secret-key"
PASSWORD = f"bench-pg-{PID}"
GIB = 1024 ** 3
RSS_TARGET_MB = 200
CHILDREN = os.path.join(ROOT, "bench", "backup_children.py")  # the measured steps, each in a fresh process
DUMP_TO_NULL = "pg_dumpall -U postgres > /dev/null"
DUMP_GZIP = ("pg_dumpall -U postgres | gzip > /tmp/bench-dump.sql.gz && stat -c %s /tmp/bench-dump.sql.gz && "
             "rm -f /tmp/bench-dump.sql.gz")


@dataclass
class SizeResult:
    label: str
    rows: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    rss_mb: float = 0.0


# -- setup: the source Postgres grown to the size (once per size; later sizes grow the same database) ------------------
def setup_size(b: Setup, size_gib: float, docs_rows: int) -> tuple[Built, str]:
    print(f"\n== {size_gib:g} GiB: building …", flush=True)
    built = build(b.src, size_gib * GIB, docs_rows)
    print(f"   built in {built.build_s:.0f} s: pg_database_size {built.db_bytes / MB:.0f} MB over all databases "
          f"({built.bench_bytes / MB:.0f} MB in bench: pgbench scale {built.scale} + {built.docs_rows} docs rows); "
          f"docs table compresses {built.docs_gzip_ratio:.2f}× with gzip", flush=True)
    return built, f"{size_gib:g} GiB (db {built.db_bytes / GIB:.2f} GiB)"


# -- the backup (wall, size, peak RSS) vs the same work by the CLIs, pg_dumpall > /dev/null and the seed's gzip -------
def backup(b: Setup, size_gib: float, r: int, today: str, timeout_s: float) -> tuple[ChildRun, dict, str]:
    """The measured thing: one postgres_backup to moto, in a fresh process."""
    key = postgres_key(f"bench-{size_gib:g}gib-r{r}/", today, datetime.datetime.now(datetime.timezone.utc), "zstd",
                       encrypted=True)
    run, cpu = b.child("backup", timeout_s, key=key, profile=b.args.profile and r == 0)
    if b.args.profile and r == 0:
        print("   cProfile of the backup child (tottime):\n" + run.stderr[-6000:], flush=True)
    return run, cpu, key


def measure_backups(b: Setup, size_gib: float, full: bool, timeout_s: float) -> Backups:
    """Each repeat: pg_dumpall > /dev/null, then the backup and its same-work baseline side by side (the order
    alternating from repeat to repeat), then pg_dumpall | gzip (first repeat of a fully measured size) or another
    pg_dumpall > /dev/null (the other sizes); pg_dumpall > /dev/null at least twice."""
    bk = Backups(repeats=b.args.repeats if full else 1)
    today = datetime.date.today().isoformat()
    for r in range(bk.repeats):
        bk.plain.append(b.in_src(DUMP_TO_NULL, timeout_s)[:2])
        for which in (("same", "backup") if r % 2 == 0 else ("backup", "same")):
            if which == "same":
                bk.same.append(b.child("samework", timeout_s))
            else:
                bk.pipe.append(backup(b, size_gib, r, today, timeout_s))
        if full and r == 0:
            t, cpu, size_out = b.in_src(DUMP_GZIP, timeout_s)
            bk.gz.append((t, cpu))
            bk.gz_bytes = int(size_out.split()[-1])
        elif not full:
            bk.plain.append(b.in_src(DUMP_TO_NULL, timeout_s)[:2])
        run = bk.pipe[-1][0]
        print(f"   backup repeat {r + 1}: pg_dumpall>/dev/null {bk.plain[-1][0]:.1f} s, same work by the CLIs "
              f"{bk.same[-1][0].result['wall']:.1f} s, postgres_backup "
              f"{run.result['wall']:.1f} s (peak RSS {run.maxrss_mb:.0f} MB)"
              + (f", pg_dumpall|gzip {bk.gz[-1][0]:.1f} s" if bk.gz and r == 0 else ""), flush=True)
    if len(bk.plain) < 2:  # the baseline is always the best of at least two (the first after a build varies most)
        bk.plain.append(b.in_src(DUMP_TO_NULL, timeout_s)[:2])
    return bk


def backup_rows(label: str, bk: Backups, full: bool) -> list[tuple]:
    """Rows: wall vs the same work by the CLIs (the target), vs pg_dumpall > /dev/null (reported); (fully measured
    sizes) wall vs gzip, compressed size vs gzip's; RSS."""
    res, plain_s, same_s = bk.best[0].result, bk.best_plain[0], bk.best_same[0].result["wall"]
    raw, stored, wall = res["raw"], res["stored"], res["wall"]
    best = f"best of {bk.repeats}" if bk.repeats > 1 else "one run"
    same_best = f"best of {len(bk.same)}" if len(bk.same) > 1 else "one run"
    rows = [(f"postgres_backup wall (encrypted), {label} → {raw / MB:.0f} MB dump ({best}), vs the same work",
             f"{fmt_s(wall)} ({mbps(raw, wall)})",
             f"pg_dumpall \\| zstd -{ZSTD_LEVEL} \\| age -r RECIPIENT > /dev/null through the same route (helper → "
             f"FIFO) {fmt_s(same_s)} ({mbps(raw, same_s)}, {same_best})",
             f"{bk.same_ratio:.2f}×", f"≤ {SAME_WORK_TARGET:.2f}× (the same work)"),
            (f"postgres_backup wall vs the raw dump, {label}", fmt_s(wall),
             f"pg_dumpall > /dev/null {fmt_s(plain_s)} ({mbps(raw, plain_s)}, best of {len(bk.plain)})",
             f"{bk.plain_ratio:.2f}×", "reported (no target)")]
    if full:
        gz_s = bk.gz[0][0]
        rows += [(f"postgres_backup wall vs the seed's gzip, {label}", fmt_s(wall),
                  f"pg_dumpall \\| gzip {fmt_s(gz_s)} ({mbps(raw, gz_s)})", f"{wall / gz_s:.2f}×", "≤ 0.6×"),
                 (f"compressed size, {label}", f"zstd-{ZSTD_LEVEL} {stored / MB:.1f} MB ({raw / stored:.2f}×)",
                  f"gzip -6 {bk.gz_bytes / MB:.1f} MB ({raw / bk.gz_bytes:.2f}×)", f"{stored / bk.gz_bytes:.3f}×",
                  "≤ 1.0× (≤ gzip)")]
    rows.append((f"peak RSS of the backup process, {label}", f"{bk.rss:.0f} MB",
                 f"{res['rss_ready_mb']:.0f} MB after imports", f"+{bk.rss - res['rss_ready_mb']:.0f} MB",
                 f"≤ {RSS_TARGET_MB} MB, flat with size"))
    return rows


# -- the backup vs its route alone (pg_dumpall's output read out of the helper's FIFO and dropped), and the exec API's
def measure_stream(b: Setup, timeout_s: float) -> Stream:
    run, cpu = b.child("stream", timeout_s, route="helper")
    exec_run, exec_cpu = b.child("stream", timeout_s, route="exec")
    t0 = time.perf_counter()
    with open(os.devnull, "wb") as null:
        subprocess.run(["docker", "exec", "-u", "postgres", b.src, "pg_dumpall", "-U", "postgres"], stdout=null,
                       check=True, timeout=timeout_s)
    return Stream(run, cpu, exec_run, exec_cpu, time.perf_counter() - t0)


def stream_rows(label: str, bk: Backups, st: Stream) -> list[tuple]:
    res, plain_s = bk.best[0].result, bk.best_plain[0]
    return [(f"postgres_backup wall vs its route alone (helper container → FIFO, dropped), {label}",
             fmt_s(res["wall"]), f"pg_dumpall through the helper's FIFO, dropped {fmt_s(st.wall)}",
             f"{res['wall'] / st.wall:.2f}×", f"— (the store's completion: {bk.completion_s:.1f} s)"),
            (f"pg_dumpall out of the container, dropped: helper's FIFO vs the exec API, {label}", fmt_s(st.wall),
             f"exec API {fmt_s(st.exec_wall)} ({st.exec_wall / plain_s:.2f}× of pg_dumpall > /dev/null)",
             f"{st.wall / st.exec_wall:.2f}×", "—")]


# -- restore_postgres into an empty scratch Postgres vs `age -d | zstd -dc | psql`, order alternating -----------------
def restore_measured(b: Setup, scratch: str, ids: dict, key: str, sha: str, stored: int, expected, profile: bool,
                     timeout_s: float) -> tuple[ChildRun, dict, list]:
    """The measured thing: restore_postgres into the empty `scratch`, in a fresh process; the census compared."""
    rr, cpu = b.child("restore", timeout_s, ids, container=scratch, key=key, sha256=sha, stored=stored,
                      profile=profile)
    if profile:
        print("   cProfile of the restore child (tottime):\n" + rr.stderr[-6000:], flush=True)
    return rr, cpu, compare_census(expected, census(b.client.api, scratch))


def restore_baseline(b: Setup, scratch: str, ids: dict, dump_path: str, expected,
                     timeout_s: float) -> tuple[float, dict, list, list]:
    """The baseline: `age -d | zstd -dc | psql` into the empty `scratch`; psql's ERROR lines; the census
    compared."""
    s0 = b.snap(ids)
    t, errors, host_tools = age_zstd_into_psql(dump_path, b.child_params["identity"], scratch, timeout_s)
    return (t, cpu_split(s0, b.snap(ids), host_side_s=host_tools), errors,
            compare_census(expected, census(b.client.api, scratch)))


def measure_restores(b: Setup, size_gib: float, key: str, sha: str, stored: int, expected) -> Restores:
    """Each repeat: both restores, each into a fresh scratch Postgres, the order alternating."""
    rs = Restores(b.args.restore_repeats)
    timeout_s = 600 + 1200 * size_gib
    dump_path = os.path.join(b.tmp, "dump.sql.zst.age")
    with open(dump_path, "wb") as fh:  # for the baseline only, not timed
        for chunk in b.store.download(key):
            fh.write(chunk)
    for r in range(rs.repeats):
        for which in (("pipeline", "baseline") if r % 2 == 0 else ("baseline", "pipeline")):
            with scratch_postgres(b.client, IMAGE, f"{NAME}-r{1 if which == 'pipeline' else 2}") as scratch:
                ids = {"src": b.src_id, "scratch": b.client.containers.get(scratch).id}
                if which == "pipeline":
                    rs.pipes.append(restore_measured(b, scratch, ids, key, sha, stored, expected,
                                                     b.args.profile and r == 0, timeout_s))
                else:
                    rs.bases.append(restore_baseline(b, scratch, ids, dump_path, expected, timeout_s))
        print(f"   restore repeat {r + 1}: restore_postgres {rs.pipes[-1][0].result['wall']:.1f} s, "
              f"age -d | zstd -dc | psql "
              f"{rs.bases[-1][0]:.1f} s", flush=True)
    os.unlink(dump_path)
    return rs


def restore_row(label: str, rs: Restores) -> tuple:
    rres, base_s = rs.best_pipe[0].result, rs.best_base[0]
    best = f"best of {rs.repeats}" if rs.repeats > 1 else "one run each"
    return (f"restore (encrypted dump) into an empty Postgres, {label} ({rres['sql_bytes'] / MB:.0f} MB SQL, {best})",
            f"{fmt_s(rres['wall'])} ({mbps(rres['sql_bytes'], rres['wall'])})",
            f"age -d \\| zstd -dc \\| psql {fmt_s(base_s)} ({mbps(rres['sql_bytes'], base_s)})",
            f"{rres['wall'] / base_s:.2f}×",
            "≤ 1.2×")


# -- one size, every size, the table ----------------------------------------------------------------------------------
def measure_size(b: Setup, size_gib: float, full: bool, docs_rows: int) -> tuple[SizeResult, int]:
    """One size. `full`: the backup against both baselines, `repeats` times, the compressed sizes, the exec stream
    and the restore. Otherwise (the large size, for the memory figure): the backup once between two
    `pg_dumpall > /dev/null`, nothing else."""
    built, label = setup_size(b, size_gib, docs_rows)
    out = SizeResult(label)
    expected = census(b.client.api, b.src) if full else None
    timeout_s = 300 + 900 * size_gib
    timed_exec(b.src, DUMP_TO_NULL, timeout_s)  # warm-up, not counted
    bk = measure_backups(b, size_gib, full, timeout_s)
    out.rss_mb = bk.rss
    out.rows += backup_rows(label, bk, full)
    out.notes.append(backup_note(label, bk, built, full))
    if full:
        st = measure_stream(b, timeout_s)
        out.rows += stream_rows(label, bk, st)
        out.notes.append(stream_note(label, bk, st))
        if bk.same_ratio > SAME_WORK_TARGET:
            out.notes.append(diagnose_backup(label, bk, st, SAME_WORK_TARGET))
    if bk.rss > RSS_TARGET_MB:
        out.notes.append(rss_note(label, bk, RSS_TARGET_MB, b.args.part_size_mb))
    if full and b.args.restore_repeats >= 1:
        run, _, key = bk.best
        rs = measure_restores(b, size_gib, key, run.result["sha256"], run.result["stored"], expected)
        out.rows.append(restore_row(label, rs))
        out.notes += restore_notes(label, rs, b.driver)
    b.store.delete_objects([p[2] for p in bk.pipe])
    return out, built.docs_rows


def measure_sizes(b: Setup, sizes: list[float]) -> list[SizeResult]:
    """Every size in turn on the same growing database; a failed size is reported as a row and ends the run."""
    results: list[SizeResult] = []
    docs_rows = 0
    for size in sizes:
        try:
            res, docs_rows = measure_size(b, size, size <= b.args.full_up_to, docs_rows)
        except Exception as exc:  # noqa: BLE001 — report the size as failed, keep the sizes measured
            print(f"   {size:g} GiB failed: {exc}", flush=True)
            results.append(SizeResult(f"{size:g} GiB", rows=[(f"{size:g} GiB", "failed",
                                                              str(exc)[:200].replace("|", "/"), "—", "—")]))
            break
        results.append(res)
    return results


def table_rows(results: list[SizeResult]) -> list[tuple]:
    """Every size's rows, then the peak RSS's growth from the smallest size to the largest."""
    rss = [r.rss_mb for r in results if r.rss_mb]
    rows = [row for r in results for row in r.rows]
    if len(rss) > 1:
        rows.append(("peak RSS growth from the smallest to the largest size", f"{rss[-1] - rss[0]:+.0f} MB",
                     " / ".join(f"{v:.0f} MB" for v in rss), "—", "not growing with size"))
    return rows


def print_table(rows: list[tuple], results: list[SizeResult], driver: str, total_s: float) -> None:
    print(f"\n{'figure':<78} {'measured':>18}  {'baseline':<38} {'ratio':>7}  target")
    for row in rows:
        print(f"{row[0]:<78} {row[1]:>18}  {row[2].replace(chr(92), ''):<38} {row[3]:>7}  {row[4]}")
    print(f"\nmachine: {machine()}, {driver}; run took {total_s / 60:.1f} min; other processes may "
          f"share the CPU (see the 'other' CPU seconds below)\nnotes:")
    for r in results:
        for note in r.notes:
            print(f"- {note}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1,4", help="database sizes in GiB, comma-separated (default 1,4)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="backups, same-work baselines and pg_dumpall > /dev/null per fully measured size "
                             "(best counts)")
    parser.add_argument("--restore-repeats", type=int, default=1, help="restores and restore baselines per size")
    parser.add_argument("--full-up-to", type=float, default=1.0,
                        help="sizes up to this (GiB) get every figure; larger ones only the backup's wall against "
                             "the same work and pg_dumpall > /dev/null, and its peak RSS (default 1)")
    parser.add_argument("--part-size-mb", type=int, default=16, help="the store's multipart part size (default 16)")
    parser.add_argument("--profile", action="store_true", help="cProfile the backup and restore children")
    parser.add_argument("--no-record", action="store_true", help="print only; append nothing to bench/RESULTS.md")
    return parser.parse_args()


def on_term(signum, _frame):
    raise SystemExit(128 + signum)


def main() -> None:
    args = parse_args()
    sizes = sorted(float(s) for s in args.sizes.split(",") if s.strip())
    signal.signal(signal.SIGTERM, on_term)
    started = time.perf_counter()
    client = docker.from_env()
    src = f"{NAME}-src"
    with (tempfile.TemporaryDirectory(prefix="prodg-bench-backup-", ignore_cleanup_errors=True) as tmp,
          moto_bucket(BUCKET, KEY_ID, SECRET) as moto,
          removed_afterwards(client, [src, f"{NAME}-r1", f"{NAME}-r2"])):
        container = start_postgres(client, IMAGE, src, PASSWORD, label=NAME)
        identity = os.path.join(tmp, "bench.agekey")
        subprocess.run(["age-keygen", "-o", identity], check=True, capture_output=True)
        recipient = subprocess.run(["age-keygen", "-y", identity], check=True, capture_output=True,
                                   text=True).stdout.strip()
        store = BackupStore(endpoint_url=moto.url, region="us-east-1", bucket=BUCKET, access_key_id=KEY_ID,
                            secret_access_key=SECRET)
        b = Setup(args, client, moto, src, container.id, tmp, store,
                  f"the Engine's {client.info().get('Driver', '?')} storage driver", CHILDREN,
                  {"endpoint": moto.url, "bucket": BUCKET, "key_id": KEY_ID, "secret": SECRET, "container": src,
                   "password": PASSWORD, "part_size_mb": args.part_size_mb, "recipients": [recipient],
                   "identity": identity, "helper_root": tmp})
        results = measure_sizes(b, sizes)
        rows = table_rows(results)
        print_table(rows, results, b.driver, time.perf_counter() - started)
        if rows and not args.no_record:
            append_result("backup_throughput", rows, [note for r in results for note in r.notes])


if __name__ == "__main__":
    main()
