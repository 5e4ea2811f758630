"""S3-compatible endpoints: the off-site backup store (Backblaze B2 in production; MinIO or moto locally) and the MinIO
whose buckets are backed up. Both are thin boto3 adapters; local runs and production differ only in configuration.

Every API call the client makes is counted (boto3's `before-call` event), so audits can prove they cost only listings.
Errors are rebuilt from the S3 error code and message, and scrubbed of the credentials, before they leave this module.
Over 300 lines because it is the one S3 adapter: the shared endpoint (client, retries, error wording), the store's
calls (Object Lock, versions, listings, downloads, batched deletes, uploads in progress) and MinIO's read side rest
on the same client code. The streamed upload is upload.py; what the calls take and return, objects.py.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from collections import Counter
from typing import Iterable, Iterator, Mapping, Optional

import dagster as dg
from pydantic import PrivateAttr

from ...lazy import boto_errors
from ...secret_source import SecretSource, SecretSourceUnavailable, redact
from .objects import (
    MIB,
    MIN_PART_BYTES,
    MultipartInProgress,
    ObjectHead,
    ObjectLock,
    ObjectVersion,
    StoredObject,
    StoreError,
    UploadResult,
    at_version,
    etag_of,
    version_of,
)
from .upload import upload_stream


class S3Endpoint(dg.ConfigurableResource):
    """An S3 API. `endpoint_url` empty means AWS itself; credentials empty means anonymous requests (never the
    instance-metadata lookup boto3 would otherwise try)."""

    endpoint_url: str = ""
    region: str = "us-east-1"
    access_key_id: str = ""
    secret_access_key: str = ""
    addressing_style: str = "path"  # path-style works on B2, MinIO and moto alike
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 120.0
    max_attempts: int = 5  # attempts per API call, the first included (standard retry mode: exponential backoff)
    list_page_size: int = 1000  # ListObjectsV2 MaxKeys (1000 is S3's maximum)

    _client: object = PrivateAttr(default=None)
    _calls: Counter = PrivateAttr(default_factory=Counter)
    _keys: Optional[tuple[str, str]] = PrivateAttr(default=None)

    # -- client and bookkeeping ----------------------------------------------------------------------------------
    def _credentials(self) -> tuple[str, str]:
        return self.access_key_id, self.secret_access_key

    def _signing_keys(self) -> tuple[str, str]:
        """The key pair this resource signs with, looked up once (a key rotated at the source meanwhile is the next
        run's): what the client uses is what scrub hides."""
        if self._keys is None:
            self._keys = self._credentials()
        return self._keys

    @property
    def client(self):
        if self._client is None:
            import boto3
            import botocore
            from botocore.config import Config as BotoConfig

            key, secret = self._signing_keys()
            config = BotoConfig(s3={"addressing_style": self.addressing_style,
                                    # every request's body hashed into its SigV4 signature (x-amz-content-sha256),
                                    # over https too: the store verifies each part's integrity
                                    "payload_signing_enabled": True},
                                # no flexible-checksum headers where S3 does not require them: boto3 ≥ 1.36 adds
                                # them to every upload by default and Backblaze B2 refused them (400
                                # InvalidArgument "Unsupported header 'x-amz-sdk-checksum-algorithm'"); the signed
                                # payload hash above does their job, and the sha256 of the whole object is ours
                                request_checksum_calculation="when_required",
                                response_checksum_validation="when_required",
                                # total attempts, the first one included (botocore's own `max_attempts` key
                                # counts only the retries)
                                retries={"total_max_attempts": self.max_attempts, "mode": "standard"},
                                connect_timeout=self.connect_timeout_s, read_timeout=self.read_timeout_s,
                                signature_version="s3v4" if key and secret else botocore.UNSIGNED)
            client = boto3.session.Session().client(
                "s3", endpoint_url=self.endpoint_url or None, region_name=self.region or None,
                aws_access_key_id=key or None, aws_secret_access_key=secret or None, config=config)
            client.meta.events.register("before-call.s3", self._count_call)
            self._client = client
        return self._client

    def _count_call(self, model, **_kwargs) -> None:
        self._calls[model.name] += 1

    def request_counts(self) -> dict[str, int]:
        """API calls made through this resource instance, by operation (ListObjectsV2, HeadObject, …)."""
        return dict(self._calls)

    def requests_total(self) -> int:
        return sum(self._calls.values())

    def reset_request_counts(self) -> None:
        self._calls.clear()

    def scrub(self, text: str) -> str:
        """`text` without this endpoint's credentials (nor any user:password@ in a URL)."""
        try:
            key, secret = self._signing_keys()
        except StoreError:  # no keys found: none to hide (and no client signs with any)
            key = secret = ""
        return redact(text, {"access_key_id": key, "secret_access_key": secret}, mask="***")

    def _error(self, action: str, exc: BaseException) -> StoreError:
        if isinstance(exc, boto_errors.ClientError):
            err = exc.response.get("Error") or {}
            meta = exc.response.get("ResponseMetadata") or {}
            status = meta.get("HTTPStatusCode", "?")
            text = f"{action}: {err.get('Code', 'error')} (HTTP {status}) {err.get('Message', '')}".rstrip()
            if meta.get("RetryAttempts"):
                text += f" (after {int(meta['RetryAttempts']) + 1} attempts)"
        elif isinstance(exc, (boto_errors.ReadTimeoutError, boto_errors.ConnectTimeoutError)):
            text = (f"{action}: the store did not answer within {self._timeout_of(exc):g} s "
                    f"({type(exc).__name__}, {self.max_attempts} attempts): {exc}")
        elif isinstance(exc, (boto_errors.ConnectionError, boto_errors.HTTPClientError)):
            text = (f"{action}: the store could not be reached ({type(exc).__name__}, {self.max_attempts} "
                    f"attempts): {exc}")
        else:
            text = f"{action}: {type(exc).__name__}: {exc}"
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return StoreError(self.scrub(text + where))

    def _timeout_of(self, exc: BaseException) -> float:
        return self.connect_timeout_s if isinstance(exc, boto_errors.ConnectTimeoutError) else self.read_timeout_s

    def _call(self, action: str, fn, **kwargs):
        try:
            return fn(**kwargs)
        except (boto_errors.ClientError, boto_errors.BotoCoreError) as exc:
            raise self._error(action, exc) from None

    def _optional_call(self, action: str, fn, absent: tuple[str, ...] = (), **kwargs) -> Optional[dict]:
        """`_call`, but None when the store answers that there is nothing of the kind: one of the error codes
        `absent`, or 501 NotImplemented (an optional S3 feature the store lacks: s3s-fs has no Object Lock,
        versions or listing of uploads in progress)."""
        try:
            return fn(**kwargs)
        except boto_errors.ClientError as exc:
            if str((exc.response.get("Error") or {}).get("Code")) in (*absent, "NotImplemented"):
                return None
            raise self._error(action, exc) from None
        except boto_errors.BotoCoreError as exc:
            raise self._error(action, exc) from None

    # -- reads shared by the store and the source -----------------------------------------------------------------
    def _list(self, bucket: str, prefix: str = "") -> Iterator[StoredObject]:
        """Every object under `prefix`, one ListObjectsV2 call per page of `list_page_size` keys."""
        kwargs = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": self.list_page_size}
        while True:
            page = self._call(f"listing s3://{bucket}/{prefix}", self.client.list_objects_v2, **kwargs)
            for item in page.get("Contents") or []:
                yield StoredObject(item["Key"], int(item["Size"]), etag_of(item.get("ETag", "")),
                                   item["LastModified"])
            if not page.get("IsTruncated"):
                return
            kwargs["ContinuationToken"] = page["NextContinuationToken"]

    def _head(self, bucket: str, key: str) -> Optional[ObjectHead]:
        try:
            resp = self.client.head_object(Bucket=bucket, Key=key)
        except boto_errors.ClientError as exc:
            if str((exc.response.get("Error") or {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self._error(f"reading s3://{bucket}/{key}", exc) from None
        except boto_errors.BotoCoreError as exc:
            raise self._error(f"reading s3://{bucket}/{key}", exc) from None
        return ObjectHead(key, int(resp["ContentLength"]), etag_of(resp.get("ETag", "")), resp["LastModified"],
                          dict(resp.get("Metadata") or {}), str(resp.get("ObjectLockMode") or ""),
                          resp.get("ObjectLockRetainUntilDate"), version_of(resp))

    def _stream(self, bucket: str, key: str, chunk_size: int = MIB, version_id: str = "",
                metadata: Optional[dict] = None) -> Iterator[bytes]:
        """The object's bytes (of `version_id`, when given); its user metadata is put into `metadata`, when given,
        before the first chunk is yielded."""
        what = f"downloading s3://{bucket}/{key}" + (f" (version {version_id})" if version_id else "")
        resp = self._call(what, self.client.get_object, Bucket=bucket, Key=key, **at_version(version_id))
        if metadata is not None:
            metadata.update(resp.get("Metadata") or {})
        body = resp["Body"]
        try:
            for chunk in body.iter_chunks(chunk_size):
                yield chunk
        except (boto_errors.ClientError, boto_errors.BotoCoreError) as exc:
            raise self._error(what, exc) from None
        finally:
            body.close()


class BackupStore(S3Endpoint):
    """The off-site backup bucket (`bucket` on `endpoint_url`): streamed multipart uploads (under Object Lock where
    the bucket has it), listings, downloads, batched deletes and, in a versioned bucket, version deletes. Credentials
    come by name only (the UI shows a resource's config): the environment variables prodg.yaml names
    (`backups.access_key_id_env`, `secret_access_key_env`), else the secrets source's keys of those names (the env
    file, where the host keeps B2_KEY_SECRET and a run container reads it from its mount, or Infisical), read when a
    run first uses the store: a key rotated at the source is used from the next run on, with no commit and no
    restart. Tests give the keys themselves."""

    bucket: str
    part_size_mb: int = 16  # multipart part size; S3 needs at least 5 MiB for all parts but the last
    delete_batch: int = 1000  # keys per DeleteObjects call (1000 is S3's maximum)
    access_key_id_env: str = ""
    secret_access_key_env: str = ""
    key_source: dict[str, str] = {}  # the secrets source's config (secret_source.secret_source_config): no value
    # Whose manifests are believed (backups/format/signing.py): prodg.yaml's backups.signers (name → key), and the
    # host's own key, derived from its age identity file (PRODG_BACKUP_IDENTITY), which also signs what this host
    # writes.
    signers: dict[str, str] = {}
    identity_file: str = ""

    _lock_enabled: Optional[bool] = PrivateAttr(default=None)

    def _credentials(self) -> tuple[str, str]:
        names = {"key": self.access_key_id_env, "secret": self.secret_access_key_env}
        given = {"key": self.access_key_id, "secret": self.secret_access_key}
        wanted = {k: n for k, n in names.items() if n and not given[k]}
        if not wanted:
            return given["key"], given["secret"]
        found = {k: os.environ.get(n, "") for k, n in wanted.items()}
        source = SecretSource(**self.key_source) if self.key_source else None
        if not all(found.values()) and source is not None:
            try:
                from_source = source.values()
            except SecretSourceUnavailable as exc:
                raise StoreError(f"no key for the backup store {self.bucket}: {exc}") from None
            found = {k: v or from_source.get(wanted[k], "") for k, v in found.items()}
        missing = [wanted[k] for k, v in found.items() if not v]
        if missing:
            raise StoreError(f"no key for the backup store {self.bucket}: {', '.join(missing)} is set neither in the "
                             f"environment nor in {source.where if source else 'a secrets source'}")
        return given["key"] or found.get("key", ""), given["secret"] or found.get("secret", "")

    @property
    def part_bytes(self) -> int:
        return max(self.part_size_mb * MIB, MIN_PART_BYTES)

    def upload_stream(self, key: str, chunks: Iterable[bytes], metadata: Mapping[str, str] | None = None,
                      content_type: str = "application/octet-stream",
                      lock: Optional[ObjectLock] = None) -> UploadResult:
        """What `chunks` yields as one object (upload.upload_stream: at most three parts in memory, sha256 and size
        on the way, under `lock` when given; nothing left behind when it fails)."""
        return upload_stream(self, key, chunks, metadata, content_type, lock)

    def put_bytes(self, key: str, data: bytes, metadata: Mapping[str, str] | None = None,
                  content_type: str = "application/octet-stream", lock: Optional[ObjectLock] = None) -> UploadResult:
        return self.upload_stream(key, [data], metadata, content_type, lock)

    # -- Object Lock and versions -------------------------------------------------------------------------------------
    def object_lock_enabled(self) -> bool:
        """Whether the bucket has Object Lock (it was created with it; it is then versioned too). Asked once per
        resource instance."""
        if self._lock_enabled is None:
            # absent: a bucket without a lock configuration, or a store without Object Lock at all
            resp = self._optional_call(f"reading the Object Lock configuration of s3://{self.bucket}",
                                       self.client.get_object_lock_configuration,
                                       ("ObjectLockConfigurationNotFoundError", "NoSuchObjectLockConfiguration"),
                                       Bucket=self.bucket)
            enabled = ((resp or {}).get("ObjectLockConfiguration") or {}).get("ObjectLockEnabled") == "Enabled"
            self._lock_enabled = enabled
        return self._lock_enabled

    def versioned(self) -> bool:
        """Whether the bucket keeps versions (versioning Enabled or Suspended): a delete without a version id
        then only adds a delete marker, and retention must delete versions."""
        resp = self._optional_call(f"reading the versioning of s3://{self.bucket}", self.client.get_bucket_versioning,
                                   Bucket=self.bucket)
        return (resp or {}).get("Status") in ("Enabled", "Suspended")

    def extend_lock(self, key: str, lock: ObjectLock, version_id: str = "") -> None:
        """Keep `key`'s version `version_id` (else its current one) locked until `lock.retain_until` (a later date
        than it had: an object a new day references lives as long as that day). Extending is allowed in both modes
        without bypassGovernance."""
        self._call(f"extending the Object Lock of s3://{self.bucket}/{key}", self.client.put_object_retention,
                   Bucket=self.bucket, Key=key, **at_version(version_id),
                   Retention={"Mode": lock.mode, "RetainUntilDate": lock.retain_until})

    def versions(self, prefix: str = "") -> Iterator[ObjectVersion]:
        """Every version and delete marker under `prefix` (ListObjectVersions pages)."""
        kwargs = {"Bucket": self.bucket, "Prefix": prefix, "MaxKeys": self.list_page_size}
        while True:
            page = self._call(f"listing the versions in s3://{self.bucket}/{prefix}",
                              self.client.list_object_versions, **kwargs)
            for v in page.get("Versions") or []:
                yield ObjectVersion(v["Key"], str(v.get("VersionId") or "null"), int(v.get("Size") or 0),
                                    v["LastModified"], bool(v.get("IsLatest")))
            for m in page.get("DeleteMarkers") or []:
                yield ObjectVersion(m["Key"], str(m.get("VersionId") or "null"), 0, m["LastModified"],
                                    bool(m.get("IsLatest")), delete_marker=True)
            if not page.get("IsTruncated"):
                return
            kwargs.update(KeyMarker=page.get("NextKeyMarker", ""),
                          VersionIdMarker=page.get("NextVersionIdMarker", ""))

    def delete_version(self, key: str, version_id: str) -> Optional[str]:
        """Delete one version for good (one DeleteObject call with its VersionId: each is refused or done on its
        own). Returns None when done, else the store's reason (an Object Lock refusal: AccessDenied)."""
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key, VersionId=version_id)
        except boto_errors.ClientError as exc:
            err = exc.response.get("Error") or {}
            return self.scrub(f"{err.get('Code', 'error')}: {err.get('Message', '')}".strip())
        except boto_errors.BotoCoreError as exc:
            raise self._error(f"deleting version {version_id} of s3://{self.bucket}/{key}", exc) from None
        return None

    # -- reads -----------------------------------------------------------------------------------------------------
    def list(self, prefix: str = "") -> Iterator[StoredObject]:
        return self._list(self.bucket, prefix)

    def head(self, key: str) -> Optional[ObjectHead]:
        """The object's size, ETag and metadata (its sha256), or None when it does not exist."""
        return self._head(self.bucket, key)

    def download(self, key: str, chunk_size: int = MIB, version_id: str = "") -> Iterator[bytes]:
        """The object's bytes: of `version_id` when given (what a manifest recorded: a version written over it
        later is never read), else its current version."""
        return self._stream(self.bucket, key, chunk_size, version_id)

    def read_bytes(self, key: str) -> bytes:
        return b"".join(self.download(key))

    def read_with_metadata(self, key: str) -> tuple[bytes, dict[str, str]]:
        """(the object's bytes, its user metadata), in one GET."""
        metadata: dict[str, str] = {}
        return b"".join(self._stream(self.bucket, key, metadata=metadata)), metadata

    def sha256_of(self, key: str, version_id: str = "") -> tuple[str, int]:
        """(sha256, size) of the object's bytes (of `version_id`, when given), computed by downloading it."""
        digest, size = hashlib.sha256(), 0
        for chunk in self.download(key, version_id=version_id):
            digest.update(chunk)
            size += len(chunk)
        return digest.hexdigest(), size

    # -- deletes and housekeeping ------------------------------------------------------------------------------------
    def delete_objects(self, keys: Iterable[str]) -> int:
        """Delete `keys` in DeleteObjects batches of `delete_batch`; returns how many were deleted."""
        keys = list(dict.fromkeys(keys))
        size = max(1, min(self.delete_batch, 1000))
        deleted = 0
        for start in range(0, len(keys), size):
            batch = keys[start:start + size]
            resp = self._call(f"deleting {len(batch)} objects from s3://{self.bucket}", self.client.delete_objects,
                              Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True})
            errors = resp.get("Errors") or []
            if errors:
                named = ", ".join(f"{e.get('Key')}: {e.get('Code')}" for e in errors[:5])
                raise StoreError(self.scrub(f"deleting from s3://{self.bucket}: {len(errors)} objects failed "
                                            f"({named})"))
            deleted += len(batch)
        return deleted

    def multipart_uploads(self, prefix: str = "") -> list[MultipartInProgress]:
        """Multipart uploads started under `prefix` and neither completed nor aborted. A store that cannot list
        them (s3s-fs answers 501) shows none: prodg aborts its own failed uploads as they fail."""
        out: list[MultipartInProgress] = []
        kwargs = {"Bucket": self.bucket, "Prefix": prefix}
        while True:
            page = self._optional_call(f"listing uploads in progress in s3://{self.bucket}/{prefix}",
                                       self.client.list_multipart_uploads, **kwargs)
            if page is None:
                return out
            out += [MultipartInProgress(u["Key"], u["UploadId"], u.get("Initiated")) for u in page.get("Uploads") or []]
            if not page.get("IsTruncated"):
                return out
            kwargs.update(KeyMarker=page.get("NextKeyMarker", ""), UploadIdMarker=page.get("NextUploadIdMarker", ""))

    def abort_uploads(self, prefix: str) -> list[str]:
        """Abort every multipart upload under `prefix`, whatever its age; returns the keys they were for. For a
        partition's own prefix before it is backed up again: a backup of one partition runs once at a time, so an
        upload found there is one that a failed run could not abort (the store was down)."""
        aborted = []
        for upload in self.multipart_uploads(prefix):
            self._call(f"aborting the unfinished upload of s3://{self.bucket}/{upload.key}",
                       self.client.abort_multipart_upload, Bucket=self.bucket, Key=upload.key,
                       UploadId=upload.upload_id)
            aborted.append(upload.key)
        return aborted

    def abort_stale_uploads(self, prefix: str, older_than: datetime.timedelta,
                            now: Optional[datetime.datetime] = None) -> int:
        """Abort uploads under `prefix` started more than `older_than` ago — what a killed process left behind."""
        now = now or datetime.datetime.now(datetime.timezone.utc)
        aborted = 0
        for upload in self.multipart_uploads(prefix):
            if upload.initiated is None or now - upload.initiated > older_than:
                self._call(f"aborting the stale upload of s3://{self.bucket}/{upload.key}",
                           self.client.abort_multipart_upload, Bucket=self.bucket, Key=upload.key,
                           UploadId=upload.upload_id)
                aborted += 1
        return aborted


class S3Source(S3Endpoint):
    """An S3 API whose buckets are backed up object by object (the mainframe's MinIO). `buckets` empty means every
    bucket the credentials can list. The secret key may be named instead of given: `secret_access_key_secret` (and
    `access_key_id_secret`) name keys of the SecretSource, resolved by `with_secrets` when a backup runs."""

    buckets: list[str] = []
    access_key_id_secret: str = ""
    secret_access_key_secret: str = ""

    def with_secrets(self, values: Mapping[str, str], endpoint_url: str = "") -> "S3Source":
        """This source with credentials filled in from the secrets source where only their names were given (and at
        `endpoint_url`, where MinIO answers from here, when given)."""
        key = self.access_key_id or (values.get(self.access_key_id_secret, "") if self.access_key_id_secret else "")
        secret = self.secret_access_key or (values.get(self.secret_access_key_secret, "")
                                            if self.secret_access_key_secret else "")
        return S3Source(endpoint_url=endpoint_url or self.endpoint_url, region=self.region, access_key_id=key,
                        secret_access_key=secret, addressing_style=self.addressing_style,
                        connect_timeout_s=self.connect_timeout_s, read_timeout_s=self.read_timeout_s,
                        max_attempts=self.max_attempts, list_page_size=self.list_page_size,
                        buckets=list(self.buckets))

    def bucket_names(self) -> list[str]:
        if self.buckets:
            return sorted(self.buckets)
        resp = self._call("listing buckets", self.client.list_buckets)
        return sorted(b["Name"] for b in resp.get("Buckets") or [])

    def objects(self, bucket: str, prefix: str = "") -> Iterator[StoredObject]:
        """The bucket's objects, each with its ETag: an S3 API that lists none (s3s-fs) is asked with a HEAD per
        object, since the mirror takes an object with the same ETag and size as unchanged."""
        for obj in self._list(bucket, prefix):
            if not obj.etag:
                head = self._head(bucket, obj.key)
                if head is None:  # deleted since it was listed
                    continue
                obj = StoredObject(obj.key, head.size, head.etag, head.last_modified)
            yield obj

    def stream(self, bucket: str, key: str, chunk_size: int = MIB) -> Iterator[bytes]:
        return self._stream(bucket, key, chunk_size)

    # -- writes, for a restore --------------------------------------------------------------------------------------
    def exists(self, bucket: str, key: str) -> bool:
        return self._head(bucket, key) is not None

    def ensure_bucket(self, bucket: str) -> None:
        if bucket not in self.bucket_names():
            self._call(f"creating bucket {bucket}", self.client.create_bucket, Bucket=bucket)

    def put_stream(self, bucket: str, key: str, reader) -> None:
        """Upload what the file-like `reader` reads as s3://bucket/key (multipart above 8 MiB, by boto3)."""
        self._call(f"writing s3://{bucket}/{key}", self.client.upload_fileobj, Fileobj=reader, Bucket=bucket,
                   Key=key)


def minio_endpoint(docker, spec) -> str:
    """Where the MinIO service's S3 port (9000) answers from here, read from the Engine: its publication (an
    Engine-picked port read back), or its address on the probe network when prodg runs in a container (a run
    container's 127.0.0.1 is its own); "" when it cannot be found (the configured address is used)."""
    where = docker.endpoint(spec, 9000) if spec is not None else None
    if not where:
        return ""
    host, port = where
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
