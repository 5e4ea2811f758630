"""Real faults on the backup path (issue #8), none of them mocked: the off-site store (moto_server) is reached through
a fault-injecting proxy (tests/standins/faultproxy.py) that the product finds at its configured endpoint URL
(`backups.endpoint_url` of the test config, loaded like prodg loads it), and the Postgres container is really stopped.

Each fault is shown four ways: the failure says what happened (operation, key, endpoint, attempts — or the
container), nothing is left half-changed (no object, no manifest, no multipart upload once the endpoint is back), no
data is lost (the retry's object has the sha256 of its bytes and restores, or its check passes) and a retry of the
same partition succeeds. Neither the failure nor the run's event log ever holds the store's secret key or the
Postgres password.
"""

import datetime
import os
import threading
from collections import Counter
from urllib.parse import parse_qs, urlsplit

import botocore.endpoint
import dagster as dg
import pytest

from prodg_assets.backups.assets.definitions import backup_definitions, build_backup_resources
from prodg_assets.backups.restore.postgres import wait_ready
from prodg_assets.backups.store.client import BackupStore
from prodg_assets.backups.store.manifest import Manifest
from prodg_assets.contract import POSTGRES_BACKUP, RESTORE_DRILL
from prodg_assets.desired import DirTree, load_desired_state
from prodg_assets.engine.exec import exec_run
from prodg_assets.settings import store_settings
from tests.backups.conftest import (
    SECRETS,
    START,
    STORE_KEY_ID,
    STORE_SECRET,
    psql,
    wait_for,
    write_config,
)
from tests.backups.test_failures import rows_in_the_cluster, rows_in_the_dump
from tests.standins.faultproxy import FaultProxy, Request, is_complete, is_upload_part, not_a_bucket_setting

SECRET_VALUES = [*SECRETS.values(), STORE_SECRET]
# ~13 MB of incompressible bytes (hex in the dump, compressed back to about their size): three 5 MiB parts.
BULK_SQL = """
create database faultbulk;
\\connect faultbulk
create table blob as select i, decode(md5(random()::text) || md5(random()::text), 'hex') as b
  from generate_series(1, 400000) i;
"""
PG_DUMP_RUNNING = ["sh", "-c", 'for p in /proc/[0-9]*; do [ "$(cat "$p/comm" 2>/dev/null)" = pg_dump ] && '
                               'echo "${p#/proc/}"; done; true']


def day(n: int) -> str:
    return (START + datetime.timedelta(days=n)).isoformat()


# -- the bed: the product pointed at the proxy -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def proxy(store_server):
    with FaultProxy(store_server.url) as p:
        yield p


@pytest.fixture()
def fault_proxy(proxy):
    yield proxy.reset()
    proxy.reset()


@pytest.fixture(scope="module")
def state(bed, proxy, tmp_path_factory):
    """The test bed's config with `backups.endpoint_url` = the proxy, loaded as prodg loads it."""
    root = str(tmp_path_factory.mktemp("faults"))
    write_config(root, proxy.url, urlsplit(bed.minio_url).port, bed.secrets_file, bed.recipients)
    return load_desired_state(DirTree(os.path.join(root, "config")), {})


@pytest.fixture(autouse=True)
def store_credentials(monkeypatch):
    """The store's keys, in the environment variables the config names (as on the host)."""
    monkeypatch.setenv("PRODG_TEST_STORE_KEY_ID", STORE_KEY_ID)
    monkeypatch.setenv("PRODG_TEST_STORE_SECRET", STORE_SECRET)


@pytest.fixture(scope="module")
def bulk(bed):
    """A database big enough for a three-part multipart upload."""
    psql(bed.client.api, bed.pg, BULK_SQL)
    yield
    psql(bed.client.api, bed.pg, "drop database if exists faultbulk with (force);")


class Attempts:
    """Every HTTP attempt the S3 client makes towards one endpoint, by operation, counted where botocore sends it
    (below its retry loop): attempts that never reach the proxy (connection refused) are counted too. Nothing is
    changed; the original send runs."""

    def __init__(self, base_url: str):
        self.base_url, self._lock, self.by_operation = base_url.rstrip("/"), threading.Lock(), Counter()

    def record(self, request) -> None:
        if not str(request.url).startswith(self.base_url + "/"):
            return
        url = urlsplit(str(request.url))
        operation = Request(str(request.method), url.path, parse_qs(url.query, keep_blank_values=True)).operation
        with self._lock:
            self.by_operation[operation] += 1

    def __getitem__(self, operation: str) -> int:
        with self._lock:
            return self.by_operation[operation]

    def total(self) -> int:
        with self._lock:
            return sum(self.by_operation.values())


@pytest.fixture()
def attempts(proxy, monkeypatch):
    counter, send = Attempts(proxy.url), botocore.endpoint.Endpoint._send

    def counting_send(endpoint, request):
        counter.record(request)
        return send(endpoint, request)

    monkeypatch.setattr(botocore.endpoint.Endpoint, "_send", counting_send)
    return counter


@pytest.fixture()
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def product_store(bed, state, **settings: str):
    """The backup_store resource exactly as the product builds it from the config, with 5 MiB parts, the bed's host
    identity (it signs the manifests) and any of its PRODG_BACKUP_* settings."""
    return build_backup_resources(state, environ={"PRODG_BACKUP_PART_SIZE_MB": "5",
                                                  "PRODG_BACKUP_IDENTITY": bed.identity_file,
                                                  **settings})["backup_store"]


def materialize(bed, state, selection: list[str], partition: str, instance, store) -> dg.ExecuteInProcessResult:
    defs = backup_definitions(state)
    return dg.materialize([*(defs.assets or []), *(defs.asset_checks or [])],
                          resources={**bed.resources(), "backup_store": store},
                          partition_key=partition, instance=instance,
                          tags={"prodg/kind": "backup", "prodg/commit": bed.commit, "prodg/capture-late": "true"},
                          selection=dg.AssetSelection.assets(*selection), raise_on_error=False)


def failure_text(result) -> str:
    return "\n".join(str(e.event_specific_data.error) for e in result.all_events if e.is_step_failure)


def assert_no_secrets(instance, *results, texts: tuple[str, ...] = ()):
    """No secret value in the failure texts nor anywhere in the runs' event logs (messages, metadata, errors)."""
    blobs = list(texts)
    for result in results:
        blobs += [dg.serialize_value(record) for record in instance.all_logs(result.run_id)]
        blobs.append(failure_text(result))
    assert len(blobs) > 10
    for secret in SECRET_VALUES:
        assert not any(secret in blob for blob in blobs), "a secret value reached the event log"


def metadata_of(result) -> dict:
    (event,) = result.get_asset_materialization_events()
    return {k: getattr(v, "value", v) for k, v in event.materialization.metadata.items()}


def assert_nothing_half_changed(store, prefix: str):
    """Seen directly on moto: no object (so no manifest either) and no multipart upload under the prefix."""
    assert [o.key for o in store.list(prefix)] == []
    assert store.multipart_uploads(prefix) == []


def assert_intact(store, result, prefix: str, bulk: bool = True) -> dict:
    """The retry's one object and its manifest under `prefix`: its bytes hash to the sha256 recorded in the
    materialisation and in the manifest; no upload left in progress; its object_intact check passed."""
    meta = metadata_of(result)
    assert sorted(o.key for o in store.list(prefix)) == sorted([meta["object_key"], meta["manifest_key"]])
    sha256, size = store.sha256_of(meta["object_key"])
    manifest = Manifest.from_json(store.read_bytes(meta["manifest_key"]))
    assert sha256 == meta["sha256"] == manifest.objects[0].sha256
    assert size == meta["bytes"]
    assert meta["raw_bytes"] > 15 * 1024 * 1024 or not bulk  # the bulk database was in it
    assert store.multipart_uploads(prefix) == []
    checks = {e.asset_check_key.name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks.get("object_intact") is True
    return meta


def assert_no_row_lost(bed, store, result, measured) -> None:
    """Every row of every table the live cluster holds is in `result`'s stored dump (downloaded, its COPY blocks
    counted); recorded for docs/RELIABILITY.md."""
    live = rows_in_the_cluster(bed)
    dumped = rows_in_the_dump(store, metadata_of(result)["object_key"], bed.operator_identity_file)
    assert measured.compare("rows", expected=live, actual=dumped) == 0, (live, dumped)


def assert_no_dump_left_running(bed):
    wait_for(lambda: exec_run(bed.client.api, bed.pg, PG_DUMP_RUNNING)[1].strip() == b"", timeout_s=20,
             what="pg_dump to end after the failed upload")


# -- settings --------------------------------------------------------------------------------------------------------
def test_store_settings_have_bounded_defaults_and_refuse_nonsense():
    assert store_settings({}) == {"connect_timeout_s": 10.0, "read_timeout_s": 120.0, "max_attempts": 5,
                                  "part_size_mb": 16}
    assert store_settings({"PRODG_BACKUP_READ_TIMEOUT_S": "2.5", "PRODG_BACKUP_MAX_ATTEMPTS": "2"})[
        "read_timeout_s"] == 2.5
    with pytest.raises(ValueError, match="PRODG_BACKUP_MAX_ATTEMPTS must be at least 1"):
        store_settings({"PRODG_BACKUP_MAX_ATTEMPTS": "0"})
    with pytest.raises(ValueError, match="PRODG_BACKUP_READ_TIMEOUT_S must be a number"):
        store_settings({"PRODG_BACKUP_READ_TIMEOUT_S": "soon"})
    with pytest.raises(ValueError, match="PRODG_BACKUP_PART_SIZE_MB must be at least 5"):
        store_settings({"PRODG_BACKUP_PART_SIZE_MB": "1"})


# -- (d) Postgres is stopped before the backup -------------------------------------------------------------------------
@pytest.mark.fault(
    fault="Postgres container stopped before the backup",
    happens="partition fails: \"the postgres service's container … is not running; nothing was dumped or uploaded\"; "
            "not one request reaches the store (no object, no manifest, no upload); after a start the retry "
            "succeeds with the right sha256 and the restore drill passes")
@pytest.mark.docker
def test_postgres_stopped_fails_naming_the_container_uploads_nothing_and_the_retry_succeeds(
        bed, state, fault_proxy, clean_store, instance, measured):
    """First in this file: the bulk database is not made yet, so the restore drill stays quick."""
    partition = day(7)
    prefix = f"postgres/{partition}/"
    store = product_store(bed, state)
    before = sorted(o.key for o in clean_store.list())
    container = bed.client.containers.get(bed.pg)
    container.stop(timeout=30)
    try:
        failed = materialize(bed, state, [POSTGRES_BACKUP], partition, instance, store)
    finally:
        container.start()
        wait_ready(bed.client.api, bed.pg)
    assert not failed.success and not failed.get_asset_materialization_events()
    text = failure_text(failed)
    assert f"postgres backup of {partition}: the postgres service's container {bed.pg} is not running; " \
           f"nothing was dumped or uploaded" in text
    assert fault_proxy.requests == []  # not one request reached the store
    assert sorted(o.key for o in clean_store.list()) == before
    assert_nothing_half_changed(clean_store, prefix)

    retry = materialize(bed, state, [POSTGRES_BACKUP], partition, instance, store)
    assert measured.retried(converged=retry.success), failure_text(retry)
    meta = assert_intact(clean_store, retry, prefix, bulk=False)
    assert_no_row_lost(bed, clean_store, retry, measured)
    drill = materialize(bed, state, [RESTORE_DRILL], partition, instance, store)
    assert drill.success, failure_text(drill)
    assert metadata_of(drill)["sha256"] == meta["sha256"]
    assert_no_secrets(instance, failed, retry, drill)


# -- (a) the store stops mid-upload ----------------------------------------------------------------------------------
@pytest.mark.fault(
    fault="S3 endpoint stopped mid-upload (after part 1)",
    happens="partition fails naming the operation, key, endpoint and attempts, and says the upload could not be "
            "aborted and what will clean it; pg_dump ends at once; no object; once the endpoint is back the retry "
            "aborts the left-over upload (`aborted_uploads: 1`) and succeeds with the right sha256, `object_intact` "
            "passes")
@pytest.mark.docker
def test_store_stopped_mid_upload_fails_clearly_and_the_retry_cleans_up_and_succeeds(
        bed, state, bulk, fault_proxy, clean_store, instance, attempts, measured):
    partition = day(2)
    prefix = f"postgres/{partition}/"
    store = product_store(bed, state, PRODG_BACKUP_MAX_ATTEMPTS="3")
    fault_proxy.stop_after(1, is_upload_part)  # part 1 stored, then the endpoint is gone

    failed = materialize(bed, state, [POSTGRES_BACKUP], partition, instance, store)

    assert not failed.success and not failed.get_asset_materialization_events()
    assert not fault_proxy.listening and fault_proxy.count("forwarded", "UploadPart") == 1
    # bounded by attempts, not by the clock: part 2 was tried exactly max_attempts (3) times against the refusing
    # endpoint, and the abort at most as often; no call was retried beyond its attempts
    refused = attempts.total() - len(fault_proxy.requests)
    assert attempts["UploadPart"] == 1 + 3, attempts.by_operation
    assert attempts["AbortMultipartUpload"] <= 3 and refused <= 3 + 3, attempts.by_operation
    text = failure_text(failed)
    assert f"postgres backup of {partition} failed; nothing was kept" in text
    assert f"uploading part 2 of s3://{clean_store.bucket}/{prefix}pg_dumpall-" in text
    assert "the store could not be reached (EndpointConnectionError, 3 attempts)" in text
    assert fault_proxy.url in text
    # it also says what it could not clean up, and who will
    assert "aborting the upload" in text and "until the next backup of this partition" in text
    assert_no_dump_left_running(bed)

    fault_proxy.start()  # the endpoint is back
    assert [o.key for o in clean_store.list(prefix)] == []  # no object: nothing a restore could mistake for a backup
    left = clean_store.multipart_uploads(prefix)
    assert len(left) == 1  # what the failed run said it could not abort
    # …and it is young: the 6-hour stale-upload rule alone would leave it (the proxy shows real start times)
    shown = BackupStore(endpoint_url=fault_proxy.url, bucket=clean_store.bucket, access_key_id=STORE_KEY_ID,
                        secret_access_key=STORE_SECRET).multipart_uploads(prefix)
    assert datetime.datetime.now(datetime.timezone.utc) - shown[0].initiated < datetime.timedelta(minutes=5)

    retry = materialize(bed, state, [POSTGRES_BACKUP], partition, instance, store)
    assert measured.retried(converged=retry.success), failure_text(retry)
    meta = assert_intact(clean_store, retry, prefix)
    assert meta["aborted_uploads"] == 1
    assert_no_row_lost(bed, clean_store, retry, measured)
    assert_no_secrets(instance, failed, retry)


# -- (b) the store answers errors on some requests ---------------------------------------------------------------------
UPLOAD = {"UploadPart", "CompleteMultipartUpload"}
# every n-th request counted over the backup's own requests, not the reads of the bucket's settings before it
OWN = not_a_bucket_setting
FLAKY = {  # fault: (switch, operations it must have hit)
    "503 SlowDown every 3rd request": (lambda p: p.fail_every(3, 503, match=OWN), UPLOAD),
    "500 InternalError every 4th request": (lambda p: p.fail_every(4, 500, match=OWN), UPLOAD),
    "connection dropped unanswered every 4th request": (lambda p: p.drop_every(4, match=OWN), UPLOAD),
    # CreateMultipartUpload among them: the retry starts a second upload, the first one is orphaned
    "answer lost after the store applied it, every 3rd request": (lambda p: p.drop_every(3, after=True, match=OWN),
                                                                  UPLOAD | {"CreateMultipartUpload"}),
    # every attempt: the upload is complete, the client never hears it
    "every CompleteMultipartUpload answer lost after the store applied it": (
        lambda p: p.drop_every(1, after=True, match=is_complete), {"CompleteMultipartUpload"}),
}


@pytest.mark.fault(
    fault="S3 errors on some requests (503 SlowDown, 500, dropped connections, answers lost after the store applied "
          "them, every CompleteMultipartUpload answer lost)",
    happens="botocore's retries carry the backup through; a lost complete is recognised; an upload orphaned by a "
            "lost CreateMultipartUpload answer is aborted by the backup itself; right sha256, no upload left (5 "
            "variants)")
@pytest.mark.docker
@pytest.mark.parametrize("fault", sorted(FLAKY))
def test_store_errors_on_some_requests_are_retried_through(bed, state, bulk, fault_proxy, clean_store, instance,
                                                           fault, measured):
    """The backup succeeds under the fault (botocore's retries, within the run): there is no failed run to retry
    once the fault is removed, so no retry is recorded ("not retried"); the rows are compared."""
    partition = day(3)
    prefix = f"postgres/{partition}/"
    switch, must_hit = FLAKY[fault]
    switch(fault_proxy)
    result = materialize(bed, state, [POSTGRES_BACKUP], partition, instance, product_store(bed, state))
    assert result.success, failure_text(result)
    injected = [r for r in fault_proxy.requests if r.outcome in ("failed", "dropped")]
    hit = {r.request.operation for r in injected}
    assert len(injected) >= 3 and must_hit <= hit, hit
    if any(r.request.operation == "CreateMultipartUpload" and r.status == 200 for r in injected):
        # an upload started whose id never reached the backup: aborted by the backup itself, not left over
        assert fault_proxy.count(operation="AbortMultipartUpload") >= 1
    fault_proxy.passthrough()
    assert_intact(clean_store, result, prefix)
    assert_no_row_lost(bed, clean_store, result, measured)
    assert_no_secrets(instance, result)


@pytest.mark.fault(
    fault="every CompleteMultipartUpload fails (HTTP 500)",
    happens='fails: "InternalError (HTTP 500) … (after 3 attempts)"; the product aborts its own upload; no object, '
            "no upload; the retry succeeds")
@pytest.mark.docker
def test_store_errors_beyond_the_retries_fail_clearly_and_keep_nothing(bed, state, bulk, fault_proxy, clean_store,
                                                                       instance, measured):
    partition = day(4)
    prefix = f"postgres/{partition}/"
    store = product_store(bed, state, PRODG_BACKUP_MAX_ATTEMPTS="3")
    fault_proxy.fail_every(1, 500, match=is_complete)  # every CompleteMultipartUpload, every attempt
    failed = materialize(bed, state, [POSTGRES_BACKUP], partition, instance, store)
    assert not failed.success and not failed.get_asset_materialization_events()
    text = failure_text(failed)
    assert f"postgres backup of {partition} failed; nothing was kept: completing the upload of " \
           f"s3://{clean_store.bucket}/{prefix}pg_dumpall-" in text
    assert "InternalError (HTTP 500) We encountered an internal error. Please try again. (after 3 attempts)" in text
    assert fault_proxy.count("failed", "CompleteMultipartUpload") == 3
    assert fault_proxy.count("forwarded", "AbortMultipartUpload") == 1  # the product aborted its upload itself
    assert_nothing_half_changed(clean_store, prefix)
    assert_no_dump_left_running(bed)

    fault_proxy.passthrough()
    retry = materialize(bed, state, [POSTGRES_BACKUP], partition, instance, store)
    assert measured.retried(converged=retry.success), failure_text(retry)
    assert metadata_of(retry)["aborted_uploads"] == 0
    assert_intact(clean_store, retry, prefix)
    assert_no_row_lost(bed, clean_store, retry, measured)
    assert_no_secrets(instance, failed, retry)


@pytest.mark.fault(
    fault="listing fails (HTTP 500) after the day's manifest is written",
    happens='fails saying the day is kept — "its manifest … is written — but tidying the store after it failed"; '
            "the dump and manifest are in the store, the dump's sha256 the manifest's")
@pytest.mark.docker
def test_a_store_failing_after_the_manifest_is_written_fails_the_run_saying_the_day_is_kept(
        bed, state, bulk, fault_proxy, clean_store, instance, measured):
    """Listing (to remove what earlier runs left, and for retention) fails once the manifest is up: the run fails, and
    says the day is backed up — its dump and manifest are in the store — never that nothing was kept."""
    partition = day(9)
    prefix = f"postgres/{partition}/"
    written = {"manifest": False}

    def listing_after_the_manifest(request) -> bool:
        if request.operation == "PutObject" and request.path.endswith("/manifest.json"):
            written["manifest"] = True
        return written["manifest"] and request.operation == "ListObjects"

    fault_proxy.fail_every(1, 500, match=listing_after_the_manifest)
    failed = materialize(bed, state, [POSTGRES_BACKUP], partition, instance, product_store(bed, state))
    assert not failed.success
    text = failure_text(failed)
    assert f"postgres backup of {partition}: kept — its manifest {prefix}manifest.json is written — but tidying " \
           f"the store after it failed" in text, text
    assert "nothing was kept" not in text
    fault_proxy.passthrough()
    keys = {o.key for o in clean_store.list(prefix)}
    (dump,) = keys - {f"{prefix}manifest.json"}
    assert len(keys) == 2 and dump.startswith(f"{prefix}pg_dumpall-"), keys
    manifest = Manifest.from_json(clean_store.read_bytes(f"{prefix}manifest.json"))
    assert clean_store.sha256_of(dump)[0] == manifest.objects[0].sha256
    # the kept day is the whole cluster: nothing to retry
    dumped = rows_in_the_dump(clean_store, dump, bed.operator_identity_file)
    assert measured.compare("rows", expected=rows_in_the_cluster(bed), actual=dumped) == 0


# -- (c) the store is slow, or stalls ----------------------------------------------------------------------------------
@pytest.mark.fault(
    fault="S3 slow (0.2 / 0.5 / 1 s on every request)",
    happens="completes in bounded time with the right sha256")
@pytest.mark.docker
def test_a_slow_store_still_gets_a_correct_backup_in_bounded_time(bed, state, bulk, fault_proxy, clean_store,
                                                                 instance, attempts, measured):
    """The backup succeeds while the store is slow: no failed run to retry, so no retry is recorded ("not
    retried"); the rows are compared."""
    partition = day(5)
    fault_proxy.delay([0.2, 0.5, 1.0])  # every request, in turn
    result = materialize(bed, state, [POSTGRES_BACKUP], partition, instance, product_store(bed, state))
    assert result.success, failure_text(result)
    delayed = fault_proxy.requests
    assert len(delayed) >= 8 and min(r.seconds for r in delayed) >= 0.2
    # bounded by work, not by the clock: slow answers cost no retry — every attempt the client made reached the
    # store once and was answered, and each of the three parts was sent once
    assert attempts.total() == len(delayed), attempts.by_operation
    assert all(r.outcome == "forwarded" for r in delayed)
    assert attempts["UploadPart"] == fault_proxy.count("forwarded", "UploadPart") == 3
    fault_proxy.passthrough()
    assert_intact(clean_store, result, f"postgres/{partition}/")
    assert_no_row_lost(bed, clean_store, result, measured)
    assert_no_secrets(instance, result)


@pytest.mark.fault(
    fault="S3 stalls on UploadPart (no answer for 300 s; read timeout 2 s)",
    happens='fails within attempts × read timeout: "did not answer within 2 s (ReadTimeoutError, 2 attempts)"; '
            "upload aborted, nothing kept; the retry succeeds")
@pytest.mark.docker
def test_a_store_that_stalls_fails_within_the_read_timeout_bound_and_keeps_nothing(
        bed, state, bulk, fault_proxy, clean_store, instance, attempts, measured):
    partition = day(6)
    prefix = f"postgres/{partition}/"
    read_timeout, tries, stall = 2, 2, 300  # the stall outlasts every attempt: only the timeout can end it
    store = product_store(bed, state, PRODG_BACKUP_READ_TIMEOUT_S=str(read_timeout),
                          PRODG_BACKUP_MAX_ATTEMPTS=str(tries))
    fault_proxy.stall(stall, match=is_upload_part)
    failed = materialize(bed, state, [POSTGRES_BACKUP], partition, instance, store)
    assert not failed.success
    # bounded by attempts, not by the clock: part 1 was sent exactly `tries` times, each ended by the read timeout
    # (the stall outlasts them all), and nothing after it was uploaded
    assert fault_proxy.count("stalled", "UploadPart") == tries
    assert attempts["UploadPart"] == tries, attempts.by_operation
    text = failure_text(failed)
    assert f"uploading part 1 of s3://{clean_store.bucket}/{prefix}pg_dumpall-" in text
    assert f"the store did not answer within {read_timeout} s (ReadTimeoutError, {tries} attempts)" in text
    fault_proxy.passthrough()  # releases the stalled requests
    assert_nothing_half_changed(clean_store, prefix)
    assert_no_dump_left_running(bed)

    retry = materialize(bed, state, [POSTGRES_BACKUP], partition, instance, store)
    assert measured.retried(converged=retry.success), failure_text(retry)
    assert_intact(clean_store, retry, prefix)
    assert_no_row_lost(bed, clean_store, retry, measured)
    assert_no_secrets(instance, failed, retry)


# -- a store as strict as Backblaze B2 about headers -----------------------------------------------------------------
@pytest.mark.docker
def test_a_store_that_refuses_the_sdks_checksum_headers_as_b2_did_still_gets_a_whole_backup(
        bed, state, bulk, fault_proxy, clean_store, instance):
    """boto3 ≥ 1.36 adds flexible-checksum headers to every upload by default, and B2 refused them (400
    InvalidArgument "Unsupported header 'x-amz-sdk-checksum-algorithm'…"). The product sends checksums only where S3
    requires them; each part's integrity rides in its signed payload hash (x-amz-content-sha256), which every
    SigV4 store verifies."""
    partition = day(8)
    prefix = f"postgres/{partition}/"
    uploads = ("PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload")
    fault_proxy.reject_header("x-amz-sdk-checksum-algorithm", match=lambda r: r.operation in uploads)
    result = materialize(bed, state, [POSTGRES_BACKUP], partition, instance, product_store(bed, state))
    assert result.success, failure_text(result)
    assert fault_proxy.count("failed") == 0
    parts = [r.request for r in fault_proxy.requests if r.request.operation == "UploadPart"]
    assert len(parts) >= 3
    for part in parts:
        signed = dict(part.headers).get("x-amz-content-sha256", "")
        assert len(signed) == 64 and int(signed, 16) >= 0, signed  # a sha256 of the body, not UNSIGNED-PAYLOAD
    fault_proxy.passthrough()
    assert_intact(clean_store, result, prefix)
