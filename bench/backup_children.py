"""The measured steps of bench/backup_throughput.py, each run in a fresh process of its own so that its peak RSS
(wait4, in the parent) is the step's alone: the backup, its same-work baseline (the same route into the zstd and
age CLIs), a route alone (a baseline), the restore. Each is instrumented to split its wall time (waiting for the
producer, S3 calls, writes to psql) and returns a dict.

    .venv/bin/python bench/backup_children.py {backup|samework|stream|restore} '<params as JSON>'

prints `RESULT <json>`; with "profile": true, cProfile's top functions go to stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from typing import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# docker after the product's modules, and cProfile only when asked for: the imports, and their order, of the script
# these steps came from, so that "MB after imports" and the peak RSS stay comparable with earlier runs (docker
# imported first costs ~2 MB more here)
import docker  # noqa: E402, I001
from bench.measure import Timed, vm  # noqa: E402
from prodg_assets.agekeys import Recipient, read_identities
from prodg_assets.backups.capture.postgres import pg_dumpall_chunks
from prodg_assets.backups.format.codec import ZSTD_LEVEL
from prodg_assets.backups.restore.postgres import restore_postgres
from prodg_assets.backups.store.client import BackupStore
from prodg_assets.backups.store.download import verify_object
from prodg_assets.backups.store.manifest import Entry, Manifest
from prodg_assets.backups.store.stream import stream_backup
from prodg_assets.engine.exec import ContainerExec


def _store(p: dict) -> BackupStore:
    return BackupStore(endpoint_url=p["endpoint"], region="us-east-1", bucket=p["bucket"],
                       access_key_id=p["key_id"], secret_access_key=p["secret"],
                       part_size_mb=p.get("part_size_mb", 16))


def _s3_timer(store) -> dict:
    """{S3 operation: [calls, seconds]}, filled in as the store's client makes calls."""
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
        pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(18)


def child_backup(p: dict) -> dict:
    """The measured thing: postgres_backup's stream_backup (helper container's FIFO → zstd → age → multipart upload),
    the route postgres_backup takes with an Engine on this machine."""
    api = docker.from_env().api
    store = _store(p)
    calls = _s3_timer(store)
    recipients = [Recipient.parse(r) for r in p.get("recipients", [])]
    rss_ready = vm("VmRSS")
    producer = Timed(pg_dumpall_chunks(api, p["container"], password=p["password"], helper_root=p["helper_root"]))
    t0 = time.perf_counter()
    result = _profiled(lambda: stream_backup(store, p["key"], producer, "zstd", {"source": p["container"]},
                                             recipients), p.get("profile", False))
    wall = time.perf_counter() - t0
    return {"wall": wall, "raw": result.raw_bytes, "stored": result.bytes, "sha256": result.sha256,
            "producer_s": producer.s, "chunks": producer.items, "s3": dict(calls), "rss_ready_mb": rss_ready}


def child_samework(p: dict) -> dict:
    """Baseline: the backup's work without the store, by the plain CLIs — `pg_dumpall | zstd -3 | age -r RECIPIENT
    > /dev/null` — with pg_dumpall's output taking the backup's route (a helper container from the Postgres image,
    its FIFO read into this process by pg_dumpall_chunks) and written into zstd's stdin. zstd (the CLI's default
    -T1: one compression thread beside its I/O) and age are processes of their own; their CPU seconds come back to
    the parent with this process's (wait4 counts reaped children)."""
    api = docker.from_env().api
    recipients = [arg for r in p["recipients"] for arg in ("-r", r)]
    t0 = time.perf_counter()
    producer = Timed(pg_dumpall_chunks(api, p["container"], password=p["password"], helper_root=p["helper_root"]))
    write_s, raw = 0.0, 0
    with open(os.devnull, "wb") as null:
        zst = subprocess.Popen(["zstd", f"-{ZSTD_LEVEL}", "-q", "-c"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               bufsize=0)
        age = subprocess.Popen(["age", *recipients], stdin=zst.stdout, stdout=null)
        zst.stdout.close()
        try:
            for chunk in producer:
                t1 = time.perf_counter()
                zst.stdin.write(chunk)
                write_s += time.perf_counter() - t1
                raw += len(chunk)
            zst.stdin.close()
            zst_code, age_code = zst.wait(), age.wait()
        finally:
            producer.it.close()  # a failure on the way: the helper container is removed now
            for proc in (zst, age):
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    wall = time.perf_counter() - t0
    if zst_code != 0 or age_code != 0:
        raise RuntimeError(f"same-work baseline: zstd exited {zst_code}, age {age_code}")
    return {"wall": wall, "raw": raw, "producer_s": producer.s, "chunks": producer.items, "write_s": write_s}


def child_stream(p: dict) -> dict:
    """Baseline: pg_dumpall's output streamed out by one route (p["route"]: "helper", the FIFO of a helper container;
    "exec", the Engine's exec API), and dropped."""
    api = docker.from_env().api
    root = p["helper_root"] if p["route"] == "helper" else ""
    t0 = time.perf_counter()
    total = sum(len(c) for c in pg_dumpall_chunks(api, p["container"], password=p["password"], helper_root=root))
    return {"wall": time.perf_counter() - t0, "raw": total}


def _instrument_restore() -> tuple[dict, Callable[[], None]]:
    """Times BackupStore.download (via Timed) and ContainerExec.send (writes to psql's stdin); returns the timers
    and the function that puts the originals back."""
    timers = {"download": None, "send_s": 0.0, "sends": 0, "last_send_end": 0.0}
    original_download, original_send = BackupStore.download, ContainerExec.send

    def download(self, key, chunk_size=1024 * 1024, version_id=""):
        timers["download"] = Timed(original_download(self, key, chunk_size, version_id))
        return timers["download"]

    def send(self, data):
        t0 = time.perf_counter()
        try:
            original_send(self, data)
        finally:
            timers["last_send_end"] = time.perf_counter()
            timers["send_s"] += timers["last_send_end"] - t0
            timers["sends"] += 1

    def undo() -> None:
        BackupStore.download, ContainerExec.send = original_download, original_send

    BackupStore.download, ContainerExec.send = download, send
    return timers, undo


def child_restore(p: dict) -> dict:
    """The measured thing: restore_postgres (download → sha256 → age → zstd → psql) into the empty Postgres
    `container`, from the partition's manifest; then, apart, what verify_first adds."""
    api = docker.from_env().api
    store = _store(p)
    identities = read_identities(p["identity"]) if p.get("identity") else []
    manifest = Manifest("postgres", "bench", "1970-01-01T00:00:00+00:00", "", "bench", p["container"], "", "", "zstd",
                        tuple(i.recipient.fingerprint for i in identities),
                        (Entry(p["key"], 0, p["stored"], p["sha256"], ""),))
    timers, undo = _instrument_restore()
    rss_ready = vm("VmRSS")
    t0 = time.perf_counter()
    result = _profiled(lambda: restore_postgres(store, manifest, identities, api, p["container"],
                                                        verify_first=False), p.get("profile", False))
    t_end = time.perf_counter()
    download_s = timers["download"].s if timers["download"] else 0.0
    undo()
    t1 = time.perf_counter()
    verify_object(store, p["key"], p["sha256"])  # what verify_first=True (the CLI's default) adds
    verify_s = time.perf_counter() - t1
    return {"wall": t_end - t0, "sql_bytes": result.sql_bytes, "ignored_errors": result.ignored_errors,
            "download_s": download_s, "send_s": timers["send_s"], "sends": timers["sends"],
            "tail_s": t_end - timers["last_send_end"], "verify_first_s": verify_s, "rss_ready_mb": rss_ready}


CHILDREN = {"backup": child_backup, "samework": child_samework, "stream": child_stream, "restore": child_restore}

if __name__ == "__main__":
    print("RESULT " + json.dumps(CHILDREN[sys.argv[1]](json.loads(sys.argv[2]))), flush=True)
