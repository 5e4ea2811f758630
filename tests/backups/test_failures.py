"""Failed backups keep nothing: a pg_dumpall that fails midway (a table it cannot lock), is killed midway or stalls
(stopped at backups.stall_timeout_s), a `git archive` of a commit that does not exist, a MinIO bucket that cannot be
listed. Each fails its partition and leaves no object under the day's prefix and no multipart upload in progress —
after the upload had started. Each fault test then removes the fault (the lock released, the bucket there) and backs
up the same partition again: the retry succeeds, and nothing is lost — every row the cluster holds is in the retry's
dump, every object of the mirrored buckets is in the retry's copy with its sha256 (what each compared is recorded for
docs/RELIABILITY.md)."""

import dataclasses
import datetime
import hashlib
import io
import json
import os
import re
import shutil
import threading
import time

import dagster as dg
import pytest

from prodg_assets.backups.store.client import S3Source
from prodg_assets.contract import CONFIG_BACKUP, MINIO_BACKUP, POSTGRES_BACKUP
from prodg_assets.desired import DirTree, load_desired_state
from prodg_assets.engine.exec import exec_run
from tests.backups.conftest import (
    MINIO_OBJECTS,
    SECRETS,
    START,
    STORE_SECRET,
    age_decrypt,
    psql,
    s3,
    wait_for,
)

pytestmark = pytest.mark.docker

DAY = (START + datetime.timedelta(days=1)).isoformat()
# Kill pg_dump — the process writing the dump under pg_dumpall — and nothing else, chosen by its exact command name.
# Not pg_dumpall itself: its `sh -c pg_dump` child would be orphaned to the container's PID 1, which is the
# postmaster, and the postmaster takes the abnormal exit of any child it reaps for a crashed backend and restarts
# the whole cluster into recovery. (busybox killall is no good either: it matches the backend serving pg_dump.)
KILL_PG_DUMP = ["sh", "-c", 'for p in /proc/[0-9]*; do [ "$(cat "$p/comm" 2>/dev/null)" = pg_dump ] && '
                            'kill -9 "${p#/proc/}"; done; true']
# ~13 MB of incompressible bytes: the dump of `bulk` alone fills more than two 5 MiB parts.
BULK_SQL = """
create database bulk;
create database zzz_locked;
\\connect bulk
create table blob as select i, decode(md5(random()::text) || md5(random()::text), 'hex') as b
  from generate_series(1, 400000) i;
\\connect zzz_locked
create table held (id int);
"""


@pytest.fixture()
def instance():
    with dg.instance_for_test() as inst:
        yield inst


@pytest.fixture()
def locked_cluster(bed):
    """`bulk` (dumped first, pg_dumpall goes alphabetically) and `zzz_locked`, whose table another session holds
    in ACCESS EXCLUSIVE mode: pg_dump of it waits for the lock after `bulk` has streamed."""
    api = bed.client.api
    since = int(time.time()) - 1
    psql(api, bed.pg, BULK_SQL)
    holder = api.exec_create(bed.pg, ["psql", "-X", "-U", "postgres", "-d", "zzz_locked", "-c",
                                      "begin; lock table held in access exclusive mode; select pg_sleep(600);"],
                             user="postgres")
    api.exec_start(holder["Id"], detach=True)
    wait_for(lambda: psql(api, bed.pg, "select count(*) from pg_locks l join pg_class c on c.oid = l.relation "
                                       "where c.relname = 'held' and l.mode = 'AccessExclusiveLock' and l.granted",
                          db="zzz_locked") == "1", what="the table lock")
    try:
        yield
    finally:
        exec_run(api, bed.pg, KILL_PG_DUMP)
        server_log = api.logs(bed.pg, since=since).decode("utf-8", "replace")
        assert "terminating any other active server processes" not in server_log  # the cluster never crashed
        psql(api, bed.pg, "select pg_terminate_backend(pid) from pg_stat_activity where datname = 'zzz_locked';\n"
                          "drop database if exists zzz_locked with (force);\n"
                          "drop database if exists bulk with (force);\n")


class UploadWatcher:
    """Watches the store from a thread: did a multipart upload under `prefix` start? Optionally acts then."""

    def __init__(self, store, prefix: str, on_upload=None):
        self.store, self.prefix, self.on_upload = store, prefix, on_upload
        self.seen: list[str] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.done.is_set():
            uploads = self.store.multipart_uploads(self.prefix)
            if uploads:
                self.seen = [u.key for u in uploads]
                if self.on_upload:
                    self.on_upload()
                return
            self.done.wait(0.02)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join(timeout=30)


def assert_nothing_kept(store, prefix: str):
    assert [o.key for o in store.list(prefix)] == []
    assert store.multipart_uploads(prefix) == []


def failure_text(result) -> str:
    return "\n".join(str(e.event_specific_data.error) for e in result.all_events if e.is_step_failure)


def metadata_of(result) -> dict:
    (event,) = result.get_asset_materialization_events()
    return {k: getattr(v, "value", v) for k, v in event.materialization.metadata.items()}


def release_the_lock(bed):
    """The fault removed: the session holding `held` in ACCESS EXCLUSIVE mode is ended."""
    api = bed.client.api
    psql(api, bed.pg, "select pg_terminate_backend(pid) from pg_stat_activity "
                      "where datname = 'zzz_locked' and pid <> pg_backend_pid();")
    wait_for(lambda: psql(api, bed.pg, "select count(*) from pg_locks l join pg_class c on c.oid = l.relation "
                                       "where c.relname = 'held'", db="zzz_locked") == "0", what="the lock to go")


def rows_in_the_cluster(bed) -> dict[str, int]:
    """Every table of every database of the live cluster with its row count ("db/schema.table"), by count(*)."""
    api = bed.client.api
    rows = {}
    for db in psql(api, bed.pg, "select datname from pg_database where datallowconn and not datistemplate").split():
        tables = psql(api, bed.pg, "select quote_ident(schemaname) || '.' || quote_ident(relname) "
                                   "from pg_stat_user_tables", db=db).split()
        for table in tables:
            rows[f"{db}/{table}"] = int(psql(api, bed.pg, f"select count(*) from {table}", db=db))
    return rows


CONNECT = re.compile(r"^\\connect (?:-reuse-previous=on )?(?:\"dbname='(?P<a>[^']+)'\"|\"?(?P<b>[^\"\s]+)\"?)\s*$")
COPY = re.compile(r"^COPY (?P<table>\S+) .*FROM stdin;$")


def rows_in_the_dump(store, key: str, identity_file: str) -> dict[str, int]:
    """The rows of every table in the stored pg_dumpall (downloaded, decrypted by the `age` CLI, decompressed, its
    COPY blocks counted)."""
    import zstandard

    assert key.endswith(".sql.zst.age"), key
    raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(age_decrypt(store.read_bytes(key), identity_file)))
    rows, db, table = {}, None, None
    for line in io.TextIOWrapper(io.BufferedReader(raw), encoding="utf-8", errors="replace"):
        line = line.rstrip("\n")
        if table is not None:
            if line == "\\.":
                table = None
            else:
                rows[table] += 1
        elif m := CONNECT.match(line):
            db = m["a"] or m["b"]
        elif m := COPY.match(line):
            table = f"{db}/{m['table']}"
            rows[table] = 0
    return rows


def assert_the_retry_lost_no_row(bed, store, retry, prefix: str, measured):
    """The retry's one object is intact (its bytes hash to the recorded sha256) and its dump holds every row of every
    table the cluster holds."""
    meta = metadata_of(retry)
    assert sorted(o.key for o in store.list(prefix)) == sorted([meta["object_key"], meta["manifest_key"]])
    assert store.sha256_of(meta["object_key"]) == (meta["sha256"], meta["bytes"])
    assert store.multipart_uploads(prefix) == []
    live = rows_in_the_cluster(bed)
    assert live.get("bulk/public.blob") == 400000, live
    dumped = rows_in_the_dump(store, meta["object_key"], bed.operator_identity_file)
    assert measured.compare("rows", expected=live, actual=dumped) == 0, (live, dumped)


@pytest.mark.fault(
    fault="`pg_dumpall` fails midway (lock timeout)",
    happens="partition fails with pg_dumpall's error, upload aborted, no object; once the lock is released the "
            "retry succeeds and its dump holds every row of the cluster")
def test_a_dump_that_fails_midway_fails_the_partition_and_leaves_no_object(bed, clean_store, locked_cluster,
                                                                           instance, measured):
    prefix = f"postgres/{DAY}/"
    run_config = {"ops": {POSTGRES_BACKUP: {"config": {"lock_wait_timeout_s": 2, "census_lock_timeout_s": 1}}}}
    with UploadWatcher(bed.store(), prefix) as watcher:
        result = bed.materialize([POSTGRES_BACKUP], DAY, instance, raise_on_error=False, run_config=run_config)
    assert not result.success
    assert watcher.seen, "the failure came before the multipart upload started"
    text = failure_text(result)
    assert "pg_dumpall" in text and "exited with status 1" in text and "nothing was kept" in text
    assert "zzz_locked" in text  # pg_dumpall's own words, from its stderr
    assert not any(s in text for s in [*SECRETS.values(), STORE_SECRET])
    assert_nothing_kept(clean_store, prefix)
    assert not result.get_asset_materialization_events()

    release_the_lock(bed)
    retry = bed.materialize([POSTGRES_BACKUP], DAY, instance, raise_on_error=False, run_config=run_config)
    assert measured.retried(converged=retry.success), failure_text(retry)
    assert_the_retry_lost_no_row(bed, clean_store, retry, prefix, measured)


@pytest.mark.fault(
    fault="`pg_dumpall` killed midway",
    happens='partition fails ("exited with status …"), upload aborted, no object; the retry succeeds and its dump '
            "holds every row of the cluster")
def test_a_dump_killed_midway_fails_the_partition_and_leaves_no_object(bed, clean_store, locked_cluster, instance,
                                                                       measured):
    prefix = f"postgres/{DAY}/"
    run_config = {"ops": {POSTGRES_BACKUP: {"config": {"lock_wait_timeout_s": 120, "census_lock_timeout_s": 1}}}}

    def kill_the_dump():  # wherever it runs: in its helper container, or in the server's (through exec)
        for container in [bed.pg, *(helper.id for helper in bed.helpers())]:
            exec_run(bed.client.api, container, KILL_PG_DUMP)

    with UploadWatcher(bed.store(), prefix, on_upload=kill_the_dump) as watcher:
        result = bed.materialize([POSTGRES_BACKUP], DAY, instance, raise_on_error=False, run_config=run_config)
    assert watcher.seen
    assert not result.success
    text = failure_text(result)
    assert "pg_dumpall (helper container of" in text and "exited with status 1" in text
    assert "pg_dump failed on database" in text
    assert_nothing_kept(clean_store, prefix)

    # the fault removed: nothing kills the dump now, and the lock that held it at `zzz_locked` is gone
    release_the_lock(bed)
    retry = bed.materialize([POSTGRES_BACKUP], DAY, instance, raise_on_error=False, run_config=run_config)
    assert measured.retried(converged=retry.success), failure_text(retry)
    assert_the_retry_lost_no_row(bed, clean_store, retry, prefix, measured)


def test_a_config_archive_of_an_unknown_commit_keeps_nothing(bed, clean_store, instance):
    result = bed.materialize([CONFIG_BACKUP], DAY, instance, raise_on_error=False, commit="0" * 40)
    assert not result.success
    assert "git archive" in failure_text(result)
    assert_nothing_kept(clean_store, f"configs/{DAY}/")


def test_a_crafted_commit_tag_or_recorded_commit_changes_no_file(bed, clean_store, instance, tmp_path):
    """A run launched with `prodg/commit=--output=FILE` (or a runless event recording such a `commit`) used to reach
    `git archive` as an option, which empties FILE before it fails: as root, any file. Now the run fails naming the
    tag, git never runs with it, and the file is untouched."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    result = bed.materialize([CONFIG_BACKUP], DAY, instance, raise_on_error=False, commit=f"--output={victim}")
    assert victim.read_bytes() == b"precious\n"
    assert not result.success
    assert "prodg/commit tag is not a commit id" in failure_text(result)

    instance.report_runless_asset_event(dg.AssetMaterialization(asset_key="postgres",
                                                                metadata={"commit": f"--output={victim}"}))
    result = bed.materialize([CONFIG_BACKUP], DAY, instance, raise_on_error=False)
    assert victim.read_bytes() == b"precious\n"
    assert not result.success
    assert "the commit the newest service materialisation recorded is not a commit id" in failure_text(result)
    assert_nothing_kept(clean_store, f"configs/{DAY}/")


@pytest.mark.fault(
    fault="MinIO mirror fails halfway",
    happens="the objects it copied are removed, no manifest; once the bucket is there the retry mirrors every "
            "object with its sha256")
def test_a_mirror_that_fails_halfway_removes_what_it_copied(bed, clean_store, instance, measured):
    source = S3Source(endpoint_url=bed.minio_url, access_key_id="minio-admin",
                      secret_access_key_secret="MINIO_ROOT_PASSWORD", buckets=["media", "no-such-bucket"])
    result = bed.materialize([MINIO_BACKUP], DAY, instance, raise_on_error=False, minio_source=source)
    assert not result.success
    text = failure_text(result)
    assert "NoSuchBucket" in text and "no manifest was written" in text
    assert SECRETS["MINIO_ROOT_PASSWORD"] not in text
    assert_nothing_kept(clean_store, "minio/")  # neither the day nor any stored object it had uploaded

    # the fault removed: the bucket is there (empty); the same mirror of the same partition again
    minio = s3(bed.minio_url)
    minio.create_bucket(Bucket="no-such-bucket")
    try:
        retry = bed.materialize([MINIO_BACKUP], DAY, instance, raise_on_error=False, minio_source=source)
    finally:
        minio.delete_bucket(Bucket="no-such-bucket")
    assert measured.retried(converged=retry.success), failure_text(retry)
    meta = metadata_of(retry)
    assert meta["object_key"] == f"minio/{DAY}/manifest.json"
    raw = clean_store.read_bytes(meta["object_key"])
    assert hashlib.sha256(raw).hexdigest() == meta["sha256"]
    manifest = json.loads(raw)
    expected = {(b, k): hashlib.sha256(data).hexdigest() for (b, k), data in MINIO_OBJECTS.items()
                if b in source.buckets}
    copied = {(e["bucket"], e["key"]): hashlib.sha256(age_decrypt(clean_store.read_bytes(e["object_key"]),
                                                                  bed.operator_identity_file)).hexdigest()
              for e in manifest["objects"]}
    assert measured.compare("objects", expected=expected, actual=copied) == 0, (expected, copied)
    assert clean_store.multipart_uploads(f"minio/{DAY}/") == []


def with_backups_setting(bed, tmp, line: str):
    """`bed` with one more `backups:` field in its prodg.yaml (its desired state loaded from a copy of its config)."""
    config = os.path.join(tmp, "config")
    shutil.copytree(os.path.join(bed.repo, "config"), config)
    path = os.path.join(config, "prodg.yaml")
    text = open(path, encoding="utf-8").read()
    assert "  freshness_hours: 26\n" in text
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text.replace("  freshness_hours: 26\n", f"  freshness_hours: 26\n  {line}\n", 1))
    return dataclasses.replace(bed, state=load_desired_state(DirTree(config), {}))


@pytest.mark.fault(
    fault='`pg_dumpall` stalls (pg_dump waits on a locked table, its lock wait far longer)',
    happens=('stopped at `backups.stall_timeout_s`: the partition fails naming pg_dumpall, its helper container '
        "and the bound; helper container removed, the dump's sessions ended in Postgres, upload aborted, no "
        "object or manifest; Postgres keeps answering; once the lock is released the retry's dump holds every"
        ' row'))
def test_a_dump_that_stalls_is_stopped_at_the_stall_timeout_and_leaves_nothing(bed, clean_store, locked_cluster,
                                                                               instance, measured, tmp_path):
    """pg_dumpall stalls (pg_dump waits for a table another session holds, with a lock wait far longer than the
    bound): with `backups.stall_timeout_s: 3` the partition fails naming pg_dumpall, its helper container and the
    bound; the helper container is gone, the dump's sessions are ended in the server (none waits on in the lock
    queue), the upload that had begun is aborted (no object, no manifest, no upload left), and Postgres keeps
    answering. The lock released, the same backup succeeds and loses no row."""
    api = bed.client.api
    stalling = with_backups_setting(bed, str(tmp_path), "stall_timeout_s: 3")
    assert stalling.state.settings.backups.stall_timeout_s == 3
    prefix = f"postgres/{DAY}/"
    run_config = {"ops": {POSTGRES_BACKUP: {"config": {"lock_wait_timeout_s": 600, "census_lock_timeout_s": 1}}}}
    with UploadWatcher(bed.store(), prefix) as watcher:
        result = stalling.materialize([POSTGRES_BACKUP], DAY, instance, raise_on_error=False, run_config=run_config)
    assert not result.success
    assert watcher.seen, "the dump stalled before the upload started"
    text = failure_text(result)
    assert (f"pg_dumpall (helper container of {bed.pg}) wrote nothing for 3s (backups.stall_timeout_s): stalled, "
            f"stopped") in text, text
    assert "nothing was kept" in text, text
    assert_nothing_kept(clean_store, prefix)
    assert bed.helpers() == []
    dump_sessions = ("select count(*) from pg_stat_activity where application_name like 'prodg-dump-%' "
                     "or application_name = 'pg_dump'")
    wait_for(lambda: psql(api, bed.pg, dump_sessions) == "0", what="the stopped dump's sessions to end")
    assert psql(api, bed.pg, "select count(*) from events", db="hermes") == "2500"  # Postgres keeps serving

    release_the_lock(bed)
    retry = stalling.materialize([POSTGRES_BACKUP], DAY, instance, raise_on_error=False, run_config=run_config)
    assert measured.retried(converged=retry.success), failure_text(retry)
    assert_the_retry_lost_no_row(bed, clean_store, retry, prefix, measured)
