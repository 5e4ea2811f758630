"""The BackupStore against a real S3 API (moto): streamed multipart uploads with their sha256, aborts that leave
nothing, counted paginated listings, batched deletes, errors without credentials."""

import datetime
import hashlib
import os

import pytest

from prodg_assets.backups.store.client import BackupStore
from prodg_assets.backups.store.objects import StoreError
from tests.backups.conftest import STORE_KEY_ID, STORE_SECRET

MIB = 1024 * 1024


def chunked(data: bytes, size: int = 300_000):
    for i in range(0, len(data), size):
        yield data[i:i + size]


def test_a_large_stream_becomes_a_multipart_object_carrying_its_sha256(bed, clean_store):
    store = bed.store()  # 5 MiB parts
    data = os.urandom(12 * MIB + 7)
    result = store.upload_stream("t/big.bin", chunked(data), metadata={"partition": "2026-11-26"})
    assert result.parts == 3 and result.bytes == len(data)
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    head = store.head("t/big.bin")
    assert head.size == len(data) and head.etag == result.etag
    assert head.metadata["partition"] == "2026-11-26"
    assert store.sha256_of("t/big.bin") == (result.sha256, len(data))
    calls = store.request_counts()
    assert calls["UploadPart"] == 3 and calls["CompleteMultipartUpload"] == 1
    assert "CopyObject" not in calls  # the sha256 goes into the manifest: the object is never copied onto itself


def test_a_small_stream_is_one_put(bed, clean_store):
    store = bed.store()
    result = store.upload_stream("t/small.bin", iter([b"a" * 10, b"", b"b" * 5]))
    assert result.parts == 1 and store.request_counts() == {"PutObject": 1}
    assert store.sha256_of("t/small.bin")[0] == hashlib.sha256(b"a" * 10 + b"b" * 5).hexdigest()


def test_a_producer_that_fails_midway_leaves_no_object_and_no_upload(bed, clean_store):
    store = bed.store()

    def dying():
        yield os.urandom(6 * MIB)
        yield os.urandom(5 * MIB)  # two parts handed to the uploader by now
        raise RuntimeError("pg_dumpall died")

    with pytest.raises(RuntimeError, match="pg_dumpall died"):
        store.upload_stream("t/dump.sql.zst", dying())
    # the first part went up (or was in flight); a part still queued when the producer failed is dropped unsent
    assert 1 <= store.request_counts()["UploadPart"] <= 2 and store.request_counts()["AbortMultipartUpload"] == 1
    assert list(store.list("t/")) == [] and store.multipart_uploads("t/") == []


def test_listings_are_paginated_and_counted(bed, clean_store):
    store = bed.store(list_page_size=10)
    for i in range(25):
        store.put_bytes(f"p/{i:03d}", b"x")
    store.put_bytes("q/elsewhere", b"x")
    store.reset_request_counts()
    assert [o.key for o in store.list("p/")] == [f"p/{i:03d}" for i in range(25)]
    assert store.request_counts() == {"ListObjectsV2": 3}


def test_deletes_go_in_batches(bed, clean_store):
    store = bed.store(delete_batch=10)
    for i in range(25):
        store.put_bytes(f"d/{i}", b"x")
    store.reset_request_counts()
    assert store.delete_objects(f"d/{i}" for i in range(25)) == 25
    assert store.request_counts() == {"DeleteObjects": 3}
    assert list(store.list("d/")) == []


def test_stale_uploads_are_aborted(bed, clean_store):
    store = bed.store()
    store.client.create_multipart_upload(Bucket=store.bucket, Key="s/left-by-a-killed-run")
    started = store.multipart_uploads("s/")[0].initiated  # (moto reports a fixed date in the past)
    hour = datetime.timedelta(hours=1)
    assert store.abort_stale_uploads("s/", 6 * hour, now=started + hour) == 0  # maybe still running: left alone
    assert store.abort_stale_uploads("s/", 6 * hour, now=started + 7 * hour) == 1
    assert store.multipart_uploads("s/") == []


def test_errors_name_the_operation_and_never_the_credentials(bed):
    missing = BackupStore(endpoint_url=bed.store_url, bucket="no-such-bucket-here", access_key_id=STORE_KEY_ID,
                          secret_access_key=STORE_SECRET)
    with pytest.raises(StoreError) as err:
        list(missing.list("x/"))
    text = str(err.value)
    assert "NoSuchBucket" in text and "listing s3://no-such-bucket-here/x/" in text
    assert STORE_SECRET not in text and STORE_KEY_ID not in text
    with pytest.raises(StoreError) as err:
        missing.upload_stream("k", [b"data"])
    assert "NoSuchBucket" in str(err.value) and STORE_SECRET not in str(err.value)
    assert missing.scrub(f"key {STORE_KEY_ID} secret {STORE_SECRET}") == "key *** secret ***"


def test_nothing_unreachable_is_contacted_without_credentials(bed, clean_store):
    """Empty credentials sign nothing (anonymous), instead of boto3 looking for instance credentials: the store,
    which checks keys, refuses the unsigned request."""
    anonymous = BackupStore(endpoint_url=bed.store_url, bucket=clean_store.bucket)
    clean_store.put_bytes("a/x", b"x")
    with pytest.raises(StoreError) as err:
        list(anonymous.list("a/"))
    assert "AccessDenied" in str(err.value), err.value


@pytest.mark.parametrize("key_id, secret, refusal", [
    ("wrong", "wrong", "InvalidAccessKeyId"),  # a key the store does not know
    (STORE_KEY_ID, "not-the-secret", "SignatureDoesNotMatch"),  # the right key id, signed with another secret
], ids=["unknown-key", "wrong-secret"])  # the key id is per run: ids the same in every worker
def test_a_wrong_key_is_refused_and_nothing_is_written(bed, clean_store, key_id, secret, refusal):
    wrong = BackupStore(endpoint_url=bed.store_url, bucket=clean_store.bucket, access_key_id=key_id,
                        secret_access_key=secret)
    with pytest.raises(StoreError) as err:
        wrong.upload_stream("w/x.bin", [b"data"])
    assert refusal in str(err.value) and secret not in str(err.value)
    assert list(clean_store.list("w/")) == []
