"""One object written from a stream: buffered into parts, a single PUT when it fits one, else a multipart upload
whose parts go up in a thread of their own; a lost answer to the completion recognised; Object Lock asked for and
set again on the completed object; and on any failure the producer closed and the upload aborted (or the completed
object deleted), so nothing incomplete remains. `BackupStore.upload_stream` is this module's `upload_stream`."""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from typing import TYPE_CHECKING, Iterable, Mapping, Optional

from ...lazy import boto_errors
from .objects import ObjectLock, StoreError, UploadResult, at_version, content_md5, etag_of, version_of

if TYPE_CHECKING:
    from .client import BackupStore


def upload_stream(store: BackupStore, key: str, chunks: Iterable[bytes], metadata: Mapping[str, str] | None = None,
                  content_type: str = "application/octet-stream",
                  lock: Optional[ObjectLock] = None) -> UploadResult:
    """Upload what `chunks` yields as one object, holding at most three parts in memory (the one filling, one
    queued, one in flight: parts go up in a thread of their own while the next is filled); sha256 and size are
    computed on the way and returned (the partition's manifest records them: nothing is copied afterwards).
    A stream that fits one part becomes a single PUT. With `lock`, the object is written under Object Lock
    until its date. If the producer raises (its way of saying the data is incomplete) or any call fails, the
    producer is closed and the multipart upload aborted — or the completed object deleted — so no object
    remains, and the exception propagates. A lost answer to CompleteMultipartUpload is recognised by the object
    being there with our size."""
    started = time.monotonic()
    user_meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    lock_params = lock.params() if lock else {}
    digest, total, buf = hashlib.sha256(), 0, bytearray()
    upload_id: Optional[str] = None
    uploader: Optional[PartUploader] = None
    parts_sent = 0
    completed = orphans = False
    try:
        for chunk in chunks:
            if not chunk:
                continue
            digest.update(chunk)
            total += len(chunk)
            buf += chunk
            while len(buf) >= store.part_bytes:
                if upload_id is None:
                    created = store._call(f"starting the upload of s3://{store.bucket}/{key}",
                                         store.client.create_multipart_upload, Bucket=store.bucket, Key=key,
                                         Metadata=user_meta, ContentType=content_type, **lock_params)
                    upload_id = created["UploadId"]
                    # retried: an earlier attempt may have started an upload whose answer was lost
                    orphans = bool((created.get("ResponseMetadata") or {}).get("RetryAttempts"))
                    uploader = PartUploader(store, key, upload_id, locked=lock is not None)
                with memoryview(buf) as view:
                    body = bytes(view[:store.part_bytes])
                del buf[:store.part_bytes]
                parts_sent += 1
                uploader.submit(parts_sent, body)
                del body
        sha256 = digest.hexdigest()
        if upload_id is None:
            body = bytes(buf)
            resp = store._call(f"uploading s3://{store.bucket}/{key}", store.client.put_object, Bucket=store.bucket,
                              Key=key, Body=body, Metadata=user_meta, ContentType=content_type,
                              **lock_params, **(content_md5(body) if lock else {}))
            etag, version = etag_of(resp.get("ETag", "")), version_of(resp)
        else:
            if buf:
                parts_sent += 1
                uploader.submit(parts_sent, bytes(buf))
            buf = bytearray()
            parts = uploader.finish()
            try:
                resp = store._call(f"completing the upload of s3://{store.bucket}/{key}",
                                  store.client.complete_multipart_upload, Bucket=store.bucket, Key=key,
                                  UploadId=upload_id, MultipartUpload={"Parts": parts})
                etag, version = etag_of(resp.get("ETag", "")), version_of(resp)
            except StoreError:
                # The answer may be what was lost (the store completed it, the connection dropped): then the
                # object is there with our size, and it is finished like any other.
                head = store._head(store.bucket, key) if exists_with_size(store, key, total) else None
                if head is None:
                    raise
                etag, version = head.etag, head.version_id
            completed = True
            if lock:
                # the same retention again, on the completed object: some S3 implementations (moto) ignore the
                # lock asked for at CreateMultipartUpload; S3 and B2 accept an unchanged date
                store._call(f"locking s3://{store.bucket}/{key}", store.client.put_object_retention,
                           Bucket=store.bucket, Key=key, **at_version(version),
                           Retention={"Mode": lock.mode, "RetainUntilDate": lock.retain_until})
    except BaseException as exc:
        close_producer(chunks)
        if uploader is not None:
            uploader.cancel()
        if upload_id is not None and not completed:
            abort(store, key, upload_id, exc)
        elif completed:
            delete_quietly(store, key, exc)
        if orphans:
            abort_orphans(store, key, upload_id)
        raise
    if orphans:
        abort_orphans(store, key, upload_id)
    return UploadResult(key, total, sha256, etag, parts_sent or 1, time.monotonic() - started, version)


class PartUploader:
    """UploadPart calls in a thread of their own, at most one part queued behind the one in flight, so the caller
    goes on compressing and hashing (and its producer producing) while the store receives a part. The first failure
    is kept and raised to the caller at its next `submit` or at `finish`; later parts are then dropped unsent."""

    def __init__(self, store: BackupStore, key: str, upload_id: str, locked: bool = False):
        self.store, self.key, self.upload_id, self.locked = store, key, upload_id, locked
        self.parts: list[dict] = []
        self.error: Optional[BaseException] = None
        self.cancelled = False
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._thread = threading.Thread(target=self._run, name=f"upload-parts-{key[-40:]}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self.error is not None or self.cancelled:
                continue  # drain, so a caller blocked in submit() is released
            number, body = item
            try:
                self.parts.append(upload_part(self.store, self.key, self.upload_id, number, body, self.locked))
            except BaseException as exc:  # raised in the caller's thread
                self.error = exc

    def submit(self, number: int, body: bytes) -> None:
        if self.error is not None:
            raise self.error
        self._queue.put((number, body))

    def finish(self) -> list[dict]:
        """Every part uploaded, in order; raises the first failure."""
        self._queue.put(None)
        self._thread.join()
        if self.error is not None:
            raise self.error
        return sorted(self.parts, key=lambda part: part["PartNumber"])

    def cancel(self) -> None:
        """Drop the parts not sent yet and wait for the one in flight (an abort must not race a part)."""
        self.cancelled = True
        self._queue.put(None)
        self._thread.join()


def upload_part(store: BackupStore, key: str, upload_id: str, number: int, body: bytes, locked: bool = False) -> dict:
    resp = store._call(f"uploading part {number} of s3://{store.bucket}/{key}", store.client.upload_part,
                      Bucket=store.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body,
                      **(content_md5(body) if locked else {}))
    return {"PartNumber": number, "ETag": resp["ETag"]}

def close_producer(chunks: Iterable[bytes]) -> None:
    """A generator producer is closed at once when the upload fails, so the process behind it (pg_dumpall, git
    archive) ends now rather than when the garbage collector gets to it — the traceback keeps it alive."""
    close = getattr(chunks, "close", None)
    if callable(close):
        try:
            close()
        except Exception:  # the producer's own error on the way out; the upload's error is what we report
            pass

def abort_orphans(store: BackupStore, key: str, upload_id: Optional[str]) -> int:
    """Abort the other uploads of exactly `key` (each backup writes its own key): those a CreateMultipartUpload
    started when its answer was lost and the call was retried. Best effort: a partition's next backup aborts
    whatever is left under its prefix anyway."""
    aborted = 0
    try:
        for upload in store.multipart_uploads(key):
            if upload.key == key and upload.upload_id != upload_id:
                store._call(f"aborting an orphaned upload of s3://{store.bucket}/{key}",
                           store.client.abort_multipart_upload, Bucket=store.bucket, Key=key,
                           UploadId=upload.upload_id)
                aborted += 1
    except StoreError:
        pass
    return aborted

def exists_with_size(store: BackupStore, key: str, size: int) -> bool:
    try:
        head = store._head(store.bucket, key)
    except StoreError:
        return False
    return head is not None and head.size == size

def abort(store: BackupStore, key: str, upload_id: str, cause: BaseException) -> None:
    try:
        store.client.abort_multipart_upload(Bucket=store.bucket, Key=key, UploadId=upload_id)
    except (boto_errors.ClientError, boto_errors.BotoCoreError) as exc:
        cause.add_note(str(store._error(f"aborting the upload of s3://{store.bucket}/{key} (it stays until the "
                                       f"next backup of this partition or the bucket's lifecycle aborts it)", exc)))

def delete_quietly(store: BackupStore, key: str, cause: BaseException) -> None:
    try:
        store.client.delete_object(Bucket=store.bucket, Key=key)
    except (boto_errors.ClientError, boto_errors.BotoCoreError) as exc:
        cause.add_note(str(store._error(f"deleting the incomplete object s3://{store.bucket}/{key}", exc)))
