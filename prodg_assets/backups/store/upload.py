"""One object written from a stream: buffered into parts, a single PUT when it fits one, else a multipart upload
whose parts go up in a thread of their own; a lost answer to the completion recognised; Object Lock asked for and
set again on the completed object; and on any failure the producer closed and the upload aborted (or the completed
object deleted), so nothing incomplete remains. `BackupStore.upload_stream` is this module's `upload_stream`."""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Protocol

from ...lazy import boto_errors
from .objects import (
    MultipartInProgress,
    ObjectHead,
    ObjectLock,
    StoreError,
    UploadResult,
    at_version,
    content_md5,
    etag_of,
    version_of,
)


class UploadTarget(Protocol):
    """What an upload needs of the store (client.BackupStore): its bucket and boto3 client, the part size, calls
    worded as StoreErrors, a HEAD, and the uploads in progress."""

    bucket: str

    @property
    def client(self) -> Any: ...

    @property
    def part_bytes(self) -> int: ...

    def _call(self, action: str, fn: Callable, **kwargs) -> Any: ...

    def _error(self, action: str, exc: BaseException) -> StoreError: ...

    def _head(self, bucket: str, key: str) -> Optional[ObjectHead]: ...

    def multipart_uploads(self, prefix: str = "") -> list[MultipartInProgress]: ...


def upload_stream(store: UploadTarget, key: str, chunks: Iterable[bytes], metadata: Mapping[str, str] | None = None,
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
    parts = Parts(chunks, store.part_bytes)
    upload = Upload(store, key, metadata, content_type, lock)
    try:
        for body in parts:
            upload.send(body)
        if upload.upload_id is None:
            etag, version = upload.put_whole(parts.rest)
        else:
            if parts.rest:
                upload.send(parts.rest)
            etag, version = upload.complete(parts.total)
            upload.lock_again(version)
    except BaseException as exc:
        close_producer(chunks)
        upload.clean_up(exc)
        raise
    upload.abort_orphans()
    return UploadResult(key, parts.total, parts.sha256, etag, upload.parts_sent or 1, time.monotonic() - started,
                        version)


class Parts:
    """`chunks` cut into parts of `size` bytes as they fill (iterating yields the full ones), hashed and counted on
    the way; `rest` is what is left at the end (the last, shorter part, or the whole stream when it fits one)."""

    def __init__(self, chunks: Iterable[bytes], size: int):
        self.chunks, self.size = chunks, size
        self.digest, self.total, self.rest = hashlib.sha256(), 0, b""

    def __iter__(self) -> Iterator[bytes]:
        buf = bytearray()
        for chunk in self.chunks:
            if not chunk:
                continue
            self.digest.update(chunk)
            self.total += len(chunk)
            buf += chunk
            while len(buf) >= self.size:
                with memoryview(buf) as view:
                    body = bytes(view[:self.size])
                del buf[:self.size]
                yield body
        self.rest = bytes(buf)

    @property
    def sha256(self) -> str:
        return self.digest.hexdigest()


class Upload:
    """One object's upload to `store`: a multipart upload started at the first full part, or a single PUT; what
    was started is aborted (or, once completed, deleted) by `clean_up`."""

    def __init__(self, store: UploadTarget, key: str, metadata: Mapping[str, str] | None, content_type: str,
                 lock: Optional[ObjectLock]):
        self.store, self.key, self.content_type, self.lock = store, key, content_type, lock
        self.metadata = {str(k): str(v) for k, v in (metadata or {}).items()}
        self.where = f"s3://{store.bucket}/{key}"
        self.upload_id: Optional[str] = None
        self.uploader: Optional[PartUploader] = None
        self.parts_sent = 0
        self.completed = False
        self.orphans = False  # CreateMultipartUpload was retried: an upload whose answer was lost may exist

    def _lock_params(self) -> dict:
        return self.lock.params() if self.lock else {}

    def send(self, body: bytes) -> None:
        """One part, handed to the part thread (the multipart upload is started first, at the first part)."""
        store = self.store
        if self.upload_id is None:
            created = store._call(f"starting the upload of {self.where}", store.client.create_multipart_upload,
                                  Bucket=store.bucket, Key=self.key, Metadata=self.metadata,
                                  ContentType=self.content_type, **self._lock_params())
            self.upload_id = created["UploadId"]
            self.orphans = bool((created.get("ResponseMetadata") or {}).get("RetryAttempts"))
            self.uploader = PartUploader(store, self.key, self.upload_id, locked=self.lock is not None)
        self.parts_sent += 1
        self.uploader.submit(self.parts_sent, body)

    def put_whole(self, body: bytes) -> tuple[str, str]:
        """The whole object in one PUT: (etag, version id)."""
        store = self.store
        resp = store._call(f"uploading {self.where}", store.client.put_object, Bucket=store.bucket, Key=self.key,
                           Body=body, Metadata=self.metadata, ContentType=self.content_type,
                           **self._lock_params(), **(content_md5(body) if self.lock else {}))
        return etag_of(resp.get("ETag", "")), version_of(resp)

    def complete(self, total: int) -> tuple[str, str]:
        """Every part sent, the upload completed: (etag, version id). The answer may be what was lost (the store
        completed it, the connection dropped): then the object is there with our size, and it is finished like any
        other."""
        store = self.store
        parts = self.uploader.finish()
        try:
            resp = store._call(f"completing the upload of {self.where}", store.client.complete_multipart_upload,
                               Bucket=store.bucket, Key=self.key, UploadId=self.upload_id,
                               MultipartUpload={"Parts": parts})
            found = etag_of(resp.get("ETag", "")), version_of(resp)
        except StoreError:
            head = store._head(store.bucket, self.key) if exists_with_size(store, self.key, total) else None
            if head is None:
                raise
            found = head.etag, head.version_id
        self.completed = True
        return found

    def lock_again(self, version: str) -> None:
        """The same retention again, on the completed object: some S3 implementations (moto) ignore the lock asked
        for at CreateMultipartUpload; S3 and B2 accept an unchanged date."""
        if self.lock:
            store = self.store
            store._call(f"locking {self.where}", store.client.put_object_retention, Bucket=store.bucket,
                        Key=self.key, **at_version(version),
                        Retention={"Mode": self.lock.mode, "RetainUntilDate": self.lock.retain_until})

    def clean_up(self, cause: BaseException) -> None:
        """After a failure: no part still going up, the upload aborted or the completed object deleted (what
        fails here is noted on `cause`), orphans aborted."""
        if self.uploader is not None:
            self.uploader.cancel()
        if self.upload_id is not None and not self.completed:
            abort(self.store, self.key, self.upload_id, cause)
        elif self.completed:
            delete_quietly(self.store, self.key, cause)
        self.abort_orphans()

    def abort_orphans(self) -> int:
        """Abort the other uploads of exactly this key (each backup writes its own key): those a retried
        CreateMultipartUpload started when its answer was lost. Best effort: a partition's next backup aborts
        whatever is left under its prefix anyway."""
        if not self.orphans:
            return 0
        store, aborted = self.store, 0
        try:
            for upload in store.multipart_uploads(self.key):
                if upload.key == self.key and upload.upload_id != self.upload_id:
                    store._call(f"aborting an orphaned upload of {self.where}", store.client.abort_multipart_upload,
                                Bucket=store.bucket, Key=self.key, UploadId=upload.upload_id)
                    aborted += 1
        except StoreError:
            pass
        return aborted


class PartUploader:
    """UploadPart calls in a thread of their own, at most one part queued behind the one in flight, so the caller
    goes on compressing and hashing (and its producer producing) while the store receives a part. The first failure
    is kept and raised to the caller at its next `submit` or at `finish`; later parts are then dropped unsent."""

    def __init__(self, store: UploadTarget, key: str, upload_id: str, locked: bool = False):
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


def upload_part(store: UploadTarget, key: str, upload_id: str, number: int, body: bytes, locked: bool = False) -> dict:
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


def exists_with_size(store: UploadTarget, key: str, size: int) -> bool:
    try:
        head = store._head(store.bucket, key)
    except StoreError:
        return False
    return head is not None and head.size == size


def abort(store: UploadTarget, key: str, upload_id: str, cause: BaseException) -> None:
    try:
        store.client.abort_multipart_upload(Bucket=store.bucket, Key=key, UploadId=upload_id)
    except (boto_errors.ClientError, boto_errors.BotoCoreError) as exc:
        cause.add_note(str(store._error(f"aborting the upload of s3://{store.bucket}/{key} (it stays until the "
                                        f"next backup of this partition or the bucket's lifecycle aborts it)", exc)))


def delete_quietly(store: UploadTarget, key: str, cause: BaseException) -> None:
    try:
        store.client.delete_object(Bucket=store.bucket, Key=key)
    except (boto_errors.ClientError, boto_errors.BotoCoreError) as exc:
        cause.add_note(str(store._error(f"deleting the incomplete object s3://{store.bucket}/{key}", exc)))
