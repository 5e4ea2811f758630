"""The window audit over a year of backups: 365 daily partitions × 3 targets in a moto_server bucket, written by the
product's own writers (`stream_backup` of a small dump into `postgres/<day>/pg_dumpall-<HHMMSS>.sql.zst.age`,
`mirror_s3` of a small MinIO stand-in bucket (stored once by content under `minio/objects/`, named by each day),
`stream_backup` of `git archive` of config/ into `configs/<day>/config-<commit>.tar.zst.age`, each day with its
manifest), what each materialisation would record kept in a Dagster instance (sqlite, in a temp dir) through the same
metadata the backup assets write.

Measured, each against a baseline in the same run on the same bucket:
- `audit_store` (the window audit the `backup_audit` asset runs) vs one paginated listing of the whole bucket;
- the asset's whole audit: reading the recorded materialisations (`recorded_partitions`) + `audit_store`;
- the S3 requests of the audit by operation (counted by the store through boto3's before-call event) vs the
  per-partition check run for every partition (`check_partition`: a listing of the day and its manifest each).

Prints a table and appends to bench/RESULTS.md. Measures; never asserts.

    .venv/bin/python bench/audit_bench.py [--days 365] [--repeats 3]
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PID = os.getpid()
BUCKET = f"prodg-bench-audit-{PID}"
SOURCE_BUCKET = f"minio-media-{PID}"
KEY_ID, SECRET = "AKIDBENCH", "bench-secret-key"
# the production targets (config/prodg.yaml backups.targets): name, asset, method, prefix
TARGETS = [("postgres", "postgres_backup", "pg_dumpall", "postgres/"),
           ("minio", "minio_backup", "s3_mirror", "minio/"),
           ("configs", "config_backup", "config_archive", "configs/")]
SOURCE_OBJECTS = {"logo.png": os.urandom(3000), "docs/readme.txt": b"hello from minio\n" * 20,
                  "videos/intro.txt": b"not really a video\n" * 100}
TARGET_S = 5.0


def fmt_s(s: float) -> str:
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.2f} s"


def fmt_requests(counts: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])) or "none"


def fill(store, source, days: list[datetime.date], commit: str, workers: int, recipients: list) -> dict:
    """Back up every day of `days` with the product's writers (objects encrypted to `recipients`, then each day's
    manifest); returns {asset: {partition: metadata}} as the backup assets would record it."""
    from prodg_assets.backups.assets.recipe import partition_metadata
    from prodg_assets.backups.capture.mirror import ContentIndex, mirror_s3
    from prodg_assets.backups.store.keys import config_key, postgres_key
    from prodg_assets.backups.store.manifest import Manifest, write_manifest
    from prodg_assets.backups.store.stream import stream_backup
    from prodg_assets.gitops.repo import git_archive_chunks

    fingerprints = tuple(r.fingerprint for r in recipients)
    # MinIO's objects stored once by content (as the first day's backup does); every day then names them
    index = ContentIndex()
    mirror_s3(source, store, "minio/", recipients, index=index)

    def finish(target: str, prefix: str, d: str, at: datetime.datetime, entries, compression: str) -> dict:
        manifest = Manifest(target, d, at.isoformat(timespec="seconds"), commit, "deployed", target, "", "",
                            compression, fingerprints, tuple(entries))
        return partition_metadata(manifest, write_manifest(store, prefix, manifest))

    def one(day: datetime.date) -> tuple[str, dict]:
        d = day.isoformat()
        at = datetime.datetime.combine(day + datetime.timedelta(days=1), datetime.time(3, 0, 7),
                                       datetime.timezone.utc)
        dump = [f"-- PostgreSQL database cluster dump of {d}\n".encode(),
                b"".join(f"insert into events values ({i}, 'event {i} of {d}');\n".encode() for i in range(200))]
        pg = stream_backup(store, postgres_key("postgres/", d, at, "zstd", True), dump, "zstd",
                           {"partition": d, "source": "postgres", "commit": commit}, recipients)
        mirror = mirror_s3(source, store, "minio/", recipients, index=index)
        cfg = stream_backup(store, config_key("configs/", d, commit, "zstd", True),
                            git_archive_chunks(ROOT, commit, "config"), "zstd",
                            {"partition": d, "source": "config", "commit": commit}, recipients)
        return d, {"postgres_backup": finish("postgres", "postgres/", d, at, [pg.entry()], "zstd"),
                   "minio_backup": finish("minio", "minio/", d, at, mirror.entries, "none"),
                   "config_backup": finish("configs", "configs/", d, at, [cfg.entry()], "zstd")}

    out: dict = {asset: {} for _, asset, _, _ in TARGETS}
    with ThreadPoolExecutor(workers) as pool:
        for d, per_asset in pool.map(one, days):
            for asset, meta in per_asset.items():
                out[asset][d] = meta
    return out


def record(instance, metadata: dict) -> None:
    """Each backup's materialisation, as a runless asset event with the metadata the asset would return."""
    import dagster as dg

    for asset, by_day in metadata.items():
        for d, meta in sorted(by_day.items()):
            instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=asset, partition=d,
                                                                        metadata=meta))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=365, help="daily partitions per target (default 365)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats of each measurement (median counts)")
    parser.add_argument("--workers", type=int, default=8, help="threads filling the bucket (not measured)")
    parser.add_argument("--no-record", action="store_true", help="print only; append nothing to bench/RESULTS.md")
    args = parser.parse_args()

    import boto3
    import dagster as dg

    from bench.common import append_result, machine
    from prodg_assets.agekeys import Identity
    from prodg_assets.backups.assets.records import recorded_partitions
    from prodg_assets.backups.proofs.audit import OK, AuditTarget, audit_store, check_partition
    from prodg_assets.backups.store.client import BackupStore, S3Source
    from tests.standins.moto import MotoServer

    started = time.perf_counter()
    tmp = tempfile.mkdtemp(prefix="prodg-bench-audit-")
    moto = MotoServer()
    try:
        moto.start()
        raw = boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1", aws_access_key_id=KEY_ID,
                           aws_secret_access_key=SECRET)
        raw.create_bucket(Bucket=BUCKET)
        raw.create_bucket(Bucket=SOURCE_BUCKET)
        for key, body in SOURCE_OBJECTS.items():
            raw.put_object(Bucket=SOURCE_BUCKET, Key=key, Body=body)

        host_identity = os.path.join(tmp, "host.agekey")  # signs the manifests, and its key is the one trusted
        with open(os.open(host_identity, os.O_WRONLY | os.O_CREAT, 0o600), "w") as fh:
            fh.write(Identity.generate().text + "\n")

        def new_store() -> BackupStore:
            s = BackupStore(endpoint_url=moto.url, region="us-east-1", bucket=BUCKET, access_key_id=KEY_ID,
                            secret_access_key=SECRET, identity_file=host_identity)
            s.client  # noqa: B018 — create the client before threads share it
            return s

        source = S3Source(endpoint_url=moto.url, region="us-east-1", access_key_id=KEY_ID, secret_access_key=SECRET,
                          buckets=[SOURCE_BUCKET])
        source.client  # noqa: B018
        now = datetime.datetime.now(datetime.timezone.utc)
        end = now.date() - datetime.timedelta(days=1)
        start = end - datetime.timedelta(days=args.days - 1)
        days = [start + datetime.timedelta(days=i) for i in range(args.days)]
        commit = os.popen(f"git -C {ROOT} rev-parse HEAD").read().strip()

        print(f"== filling s3://{BUCKET} on moto_server: {args.days} days × 3 targets …", flush=True)
        t0 = time.perf_counter()
        fill_store = new_store()
        metadata = fill(fill_store, source, days, commit, args.workers, [Identity.generate().recipient])
        fill_s = time.perf_counter() - t0
        objects = list(fill_store.list())
        total_bytes = sum(o.size for o in objects)
        print(f"   {len(objects)} objects, {total_bytes / 1e6:.1f} MB, in {fill_s:.1f} s "
              f"({fmt_requests(fill_store.request_counts())})", flush=True)

        t0 = time.perf_counter()
        os.makedirs(os.path.join(tmp, "dagster"))
        instance = dg.DagsterInstance.local_temp(tempdir=os.path.join(tmp, "dagster"))
        record(instance, metadata)
        record_s = time.perf_counter() - t0
        print(f"   {sum(len(v) for v in metadata.values())} materialisations recorded in {record_s:.1f} s", flush=True)

        keys = [d.isoformat() for d in days]
        audit_targets = [AuditTarget(name, prefix) for name, _, _, prefix in TARGETS]

        def read_recorded() -> dict:
            return {name: recorded_partitions(instance, asset, keys) for name, asset, _, _ in TARGETS}

        recorded = read_recorded()

        # -- measurements, interleaved, `repeats` times each; a fresh store (client) per run ------------------------
        runs: dict[str, list[float]] = {"audit": [], "asset": [], "recorded": [], "list": [], "heads": []}
        last: dict = {}
        for r in range(args.repeats):
            store = new_store()
            t0 = time.perf_counter()
            n = sum(1 for _ in store.list())
            runs["list"].append(time.perf_counter() - t0)
            last["list"] = (n, store.request_counts())

            store = new_store()
            t0 = time.perf_counter()
            result = audit_store(store, audit_targets, start, end, recorded, now, 26)
            runs["audit"].append(time.perf_counter() - t0)
            last["audit"] = result

            store = new_store()
            t0 = time.perf_counter()
            rec = read_recorded()
            t1 = time.perf_counter()
            result2 = audit_store(store, audit_targets, start, end, rec, now, 26)
            t2 = time.perf_counter()
            runs["recorded"].append(t1 - t0)
            runs["asset"].append(t2 - t0)
            last["asset"] = result2

            print(f"   repeat {r + 1}: audit_store {runs['audit'][-1]:.2f} s, recorded+audit "
                  f"{runs['asset'][-1]:.2f} s, list of the bucket {runs['list'][-1]:.2f} s", flush=True)
        # the naive baseline, once: the per-partition check for every partition (a listing + a GET each)
        store = new_store()
        prefixes = {name: prefix for name, _, _, prefix in TARGETS}
        t0 = time.perf_counter()
        head_findings = [check_partition(store, prefixes[name], d, r_) for name, by_day in recorded.items()
                         for d, r_ in by_day.items()]
        runs["heads"].append(time.perf_counter() - t0)
        last["heads"] = (head_findings, store.request_counts())
        print(f"   check_partition per partition: {runs['heads'][-1]:.2f} s", flush=True)

        med = {k: statistics.median(v) for k, v in runs.items()}
        result = last["audit"]
        findings = sum(len(t.findings) for t in result.targets)
        problems = sum(len(t.problems) for t in result.targets)
        listed = sum(t.objects_listed for t in result.targets)
        list_n, list_req = last["list"]
        head_findings, head_req = last["heads"]
        head_ok = sum(1 for f in head_findings if f.status == OK)
        best = f"median of {args.repeats}"
        label = f"{args.days} partitions × 3 targets, {len(objects)} objects"
        rows = [
            (f"window audit (`audit_store`), {label} ({best})", fmt_s(med["audit"]),
             f"one listing of the whole bucket {fmt_s(med['list'])}", f"{med['audit'] / med['list']:.2f}×",
             f"≤ {TARGET_S:g} s"),
            (f"the asset's audit: recorded materialisations from the Dagster instance (sqlite) + `audit_store` "
             f"({best})", f"{fmt_s(med['asset'])} (instance reads {fmt_s(med['recorded'])})",
             f"`audit_store` alone {fmt_s(med['audit'])}", f"{med['asset'] / med['audit']:.2f}×",
             f"≤ {TARGET_S:g} s"),
            (f"S3 requests of the window audit, {findings} partition verdicts ({problems} problems), "
             f"{listed} objects listed", f"{sum(result.requests.values())}: {fmt_requests(result.requests)}",
             f"check_partition per partition: {sum(head_req.values())}: {fmt_requests(head_req)}, "
             f"{fmt_s(med['heads'])} (one run)",
             f"{sum(result.requests.values()) / max(sum(head_req.values()), 1):.3f}×",
             "counted and reported"),
            ("S3 requests of one listing of the whole bucket", f"{sum(list_req.values())}: {fmt_requests(list_req)}",
             f"{list_n} objects", "—", "—"),
        ]
        total = time.perf_counter() - started
        print(f"\n{'figure':<100} {'measured':>30}  {'baseline':<50} {'ratio':>7}  target")
        for row in rows:
            print(f"{row[0]:<100} {row[1]:>30}  {row[2]:<50} {row[3]:>7}  {row[4]}")
        print(f"\nmachine: {machine()}; run took {total:.0f} s (filling the bucket {fill_s:.0f} s, recording "
              f"{record_s:.0f} s); per-partition checks: {head_ok} of {len(head_findings)} ok; every window-audit "
              f"verdict: {dict(sorted(last['asset'].targets[0].counts().items()))} (postgres)")
        if not args.no_record:
            append_result("audit", rows)
    finally:
        moto.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
