"""MinIO read through an S3 API whose listings carry no ETags (s3s-fs, which the rebuild test bed's MinIO stand-in
runs): the mirror takes an object with the same ETag and size as a kept day's for unchanged, so without ETags an
object rewritten with new bytes of the same size would be named by the next day's manifest with the OLD content.
Each object's ETag is then asked with a HEAD, and a same-size rewrite is stored again."""

import hashlib
import os

import boto3

from prodg_assets.backups.capture.mirror import ContentIndex, mirror_s3
from prodg_assets.backups.store.client import S3Source
from tests.standins.s3sfs import S3sFsServer

KEY_ID, SECRET = "minio-admin", f"minio-Secret-{os.getpid()}-e7e7"


def test_an_object_rewritten_with_the_same_size_is_stored_again(clean_store, tmp_path):
    with S3sFsServer(str(tmp_path / "minio"), KEY_ID, SECRET) as minio:
        client = boto3.client("s3", endpoint_url=minio.url, region_name="us-east-1", aws_access_key_id=KEY_ID,
                              aws_secret_access_key=SECRET)
        client.create_bucket(Bucket="media")
        client.put_object(Bucket="media", Key="same-size.bin", Body=b"a" * 4096)
        assert "ETag" not in client.list_objects_v2(Bucket="media")["Contents"][0]  # what makes this case
        source = S3Source(endpoint_url=minio.url, region="us-east-1", access_key_id=KEY_ID, secret_access_key=SECRET)
        index = ContentIndex()
        first = mirror_s3(source, clean_store, "minio/", index=index)
        client.put_object(Bucket="media", Key="same-size.bin", Body=b"b" * 4096)
        second = mirror_s3(source, clean_store, "minio/", index=index)
        unchanged = mirror_s3(source, clean_store, "minio/", index=index)
    assert [e.content_sha256 for e in first.entries] == [hashlib.sha256(b"a" * 4096).hexdigest()]
    assert [e.content_sha256 for e in second.entries] == [hashlib.sha256(b"b" * 4096).hexdigest()]
    assert len(second.written) == 1 and second.reused == 0
    assert unchanged.written == [] and unchanged.reused == 1  # and an unchanged object is still not read again
