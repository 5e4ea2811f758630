"""MotoServer(keys=…): the S3 stand-in answers only requests signed (SigV4) with a key the test chose — its id and
its secret — and refuses an unknown key id, a signature made with another secret, a request changed after it was
signed and an unsigned request. Without keys it still accepts any credentials."""

import datetime
import io
import shutil
import subprocess
import urllib.error
import urllib.request
import uuid

import boto3
import botocore
import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from tests.standins.moto import MotoServer

PID = uuid.uuid4().hex[:8]
KEY_ID = f"AKIDBACKUP{PID}"  # the shape tests/backups uses: not an AKIA… id, not moto's
SECRET = f"store-Secret-Key-{PID}-c0ffee"
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def server():
    with MotoServer(keys={KEY_ID: SECRET}) as s3:
        yield s3


def client(url: str, key_id: str = KEY_ID, secret: str = SECRET, **config):
    return boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id=key_id,
                        aws_secret_access_key=secret, config=Config(retries={"max_attempts": 1}, **config))


def refused(call, code: str) -> None:
    with pytest.raises(botocore.exceptions.ClientError) as err:
        call()
    assert err.value.response["Error"]["Code"] == code, err.value.response
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def bucket(s3, **kwargs) -> str:
    name = f"auth-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name, **kwargs)
    return name


def test_the_chosen_key_reads_and_writes(server):
    s3 = client(server.url)
    b = bucket(s3)
    s3.put_object(Bucket=b, Key="day/one", Body=b"one")
    assert s3.get_object(Bucket=b, Key="day/one")["Body"].read() == b"one"
    upload = s3.create_multipart_upload(Bucket=b, Key="day/big")["UploadId"]
    parts = [s3.upload_part(Bucket=b, Key="day/big", UploadId=upload, PartNumber=n, Body=body)["ETag"]
             for n, body in ((1, b"a" * 5 * MiB), (2, b"b" * 10))]
    s3.complete_multipart_upload(Bucket=b, Key="day/big", UploadId=upload, MultipartUpload={
        "Parts": [{"PartNumber": n, "ETag": etag} for n, etag in enumerate(parts, 1)]})
    s3.upload_fileobj(io.BytesIO(b"c" * 12 * MiB), b, "day/managed")  # boto3's own multipart, parts in threads
    listed = s3.list_objects_v2(Bucket=b, Prefix="day/")["Contents"]
    assert {(o["Key"], o["Size"]) for o in listed} == {("day/one", 3), ("day/big", 5 * MiB + 10),
                                                       ("day/managed", 12 * MiB)}
    assert s3.get_object(Bucket=b, Key="day/big", Range="bytes=-11")["Body"].read() == b"a" + b"b" * 10


def test_object_lock_holds_for_the_chosen_key(server):
    s3 = client(server.url)
    b = bucket(s3, ObjectLockEnabledForBucket=True)
    until = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=1)
    s3.put_object(Bucket=b, Key="locked", Body=b"kept", ObjectLockMode="GOVERNANCE", ObjectLockRetainUntilDate=until,
                  ChecksumAlgorithm="SHA256")
    head = s3.head_object(Bucket=b, Key="locked")  # (moto 5.2 has no GetObjectRetention: a 500, with or without keys)
    version = head["VersionId"]
    assert head["ObjectLockMode"] == "GOVERNANCE"
    refused(lambda: s3.delete_object(Bucket=b, Key="locked", VersionId=version), "AccessDenied")
    assert s3.get_object(Bucket=b, Key="locked", VersionId=version)["Body"].read() == b"kept"


def test_an_unknown_key_id_is_refused(server):
    b = bucket(client(server.url))
    other = client(server.url, key_id=f"AKIDOTHER{PID}")
    refused(lambda: other.list_objects_v2(Bucket=b), "InvalidAccessKeyId")
    refused(lambda: other.put_object(Bucket=b, Key="k", Body=b"x"), "InvalidAccessKeyId")
    refused(lambda: other.create_bucket(Bucket=f"other-{PID}"), "InvalidAccessKeyId")


def test_the_right_key_id_with_a_wrong_secret_is_refused(server):
    s3 = client(server.url)
    b = bucket(s3)
    s3.put_object(Bucket=b, Key="k", Body=b"x")
    wrong = client(server.url, secret=SECRET[:-1] + "f")
    refused(lambda: wrong.get_object(Bucket=b, Key="k"), "SignatureDoesNotMatch")
    refused(lambda: wrong.put_object(Bucket=b, Key="k2", Body=b"y"), "SignatureDoesNotMatch")
    refused(lambda: wrong.delete_object(Bucket=b, Key="k"), "SignatureDoesNotMatch")
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=b)["Contents"]] == ["k"]


def test_a_request_changed_after_signing_is_refused(server):
    """The signature covers the request (here its query), not only the key: moto recomputes it with the secret."""
    b = bucket(client(server.url))
    signed = AWSRequest(method="GET", url=f"{server.url}/{b}?list-type=2&prefix=a")
    S3SigV4Auth(Credentials(KEY_ID, SECRET), "s3", "us-east-1").add_auth(signed)
    headers = dict(signed.headers.items())
    with urllib.request.urlopen(urllib.request.Request(signed.url, headers=headers), timeout=10) as answer:
        assert answer.status == 200
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(urllib.request.Request(f"{server.url}/{b}?list-type=2&prefix=b", headers=headers),
                               timeout=10)
    assert err.value.code == 403 and b"SignatureDoesNotMatch" in err.value.read()


def test_an_unsigned_request_is_refused(server):
    s3 = client(server.url)
    b = bucket(s3)
    s3.put_object(Bucket=b, Key="k", Body=b"x")
    unsigned = client(server.url, signature_version=botocore.UNSIGNED)
    refused(lambda: unsigned.get_object(Bucket=b, Key="k"), "AccessDenied")
    refused(lambda: unsigned.put_object(Bucket=b, Key="k2", Body=b"y"), "AccessDenied")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{server.url}/{b}/k", timeout=10)
    assert err.value.code == 403
    presigned = s3.generate_presigned_url("get_object", Params={"Bucket": b, "Key": "k"})
    with pytest.raises(urllib.error.HTTPError) as err:  # moto does not check presigned URLs: none is answered
        urllib.request.urlopen(presigned, timeout=10)
    assert err.value.code == 403


@pytest.mark.skipif(not shutil.which("curl"), reason="no curl")
def test_curl_sigv4_as_the_runbook_signs(server):
    """The runbook's `curl --aws-sigv4` with the chosen key, given x-amz-content-sha256 (which S3 requires and curl
    before 8 does not send): answered with the right secret, refused with another."""
    s3 = client(server.url)
    b = bucket(s3)
    s3.put_object(Bucket=b, Key="day/manifest.json", Body=b"{}")

    def curl(secret: str) -> subprocess.CompletedProcess:
        return subprocess.run(["curl", "-sS", "-w", "\n%{http_code}", "--aws-sigv4", "aws:amz:us-east-1:s3",
                               "--user", f"{KEY_ID}:{secret}", "-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD",
                               f"{server.url}/{b}/day/manifest.json"], capture_output=True, text=True, timeout=30)

    assert curl(SECRET).stdout.splitlines() == ["{}", "200"]
    answer = curl("wrong").stdout
    assert answer.endswith("\n403") and "SignatureDoesNotMatch" in answer


def test_without_keys_any_credentials_are_accepted():
    with MotoServer() as s3:
        anyone = client(s3.url, key_id="testing", secret="testing")
        b = bucket(anyone)
        anyone.put_object(Bucket=b, Key="k", Body=b"x")
        assert client(s3.url, key_id="other", secret="x").get_object(Bucket=b, Key="k")["Body"].read() == b"x"
