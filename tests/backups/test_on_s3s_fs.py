"""The backup tests that say what the off-site store holds, run a second time against an independent S3
implementation: s3s-fs (Rust, objects as files on disk; the dev profile's backup store), where the other modules
use moto_server. Both must agree with the product: the same objects, manifests, ciphertext, audits, restores and
retention. The test functions are imported, so pytest collects them here too, with this module's `bed`, whose store
is s3s-fs (fixtures resolve from the module that collects a test).

What s3s-fs lacks, and how prodg takes it: no Object Lock and no versions (501 NotImplemented: read as "the bucket
has neither"), no listing of uploads in progress (501: none to abort; prodg aborts its own failed uploads as they
fail), and no ETag in ListObjectsV2 (the audit then compares sizes, and the deep check the sha256). Object Lock and
the stale-upload sweep are tested on moto only (test_object_lock.py, test_store.py)."""

import pytest  # noqa: I001 (the imports below are in collection order)

from tests.backups.conftest import BUCKET, STORE_KEY_ID, STORE_SECRET, make_bed
# in each module's own order: later tests there break what earlier ones read (a corrupted day, an emptied bucket)
from tests.backups.test_assets import (  # noqa: F401 (collected here)
    instance,
    three_days,
    test_each_partition_is_its_objects_and_a_manifest_with_checksums_verified_by_download,
    test_what_leaves_the_host_is_ciphertext_that_the_age_cli_alone_opens,
    test_the_data_version_is_the_stored_objects_sha256,
    test_a_late_capture_is_refused_unless_forced_and_an_earlier_one_is_recorded_again,
    test_checks_pass_per_partition_and_name_the_missing_days_of_the_window,
    test_restore_drill_restores_the_dump_and_matches_the_census,
    test_the_window_audit_names_missing_and_late_days_from_manifests,
    test_a_deleted_or_corrupted_object_fails_exactly_its_partitions_check,
)
from tests.backups.test_audit import (  # noqa: F401
    year,
    test_a_year_of_three_targets_is_audited_from_manifests,
    test_the_partition_check,
    test_a_deep_check_catches_bytes_that_differ_from_the_manifest,
    test_freshness_is_the_newest_manifests_capture_time_not_the_stores_upload_time,
)
from tests.backups.test_restore import (  # noqa: F401
    dump,
    host,
    scratch,
    test_a_restore_reproduces_the_rows_of_a_database_with_known_contents,
    test_a_corrupt_object_never_reaches_the_target,
)
from tests.backups.test_retention import (  # noqa: F401
    test_retention_on_the_store_deletes_exactly_the_oldest_ten_of_one_prefix,
)
from tests.backups.test_store import (  # noqa: F401
    test_a_small_stream_is_one_put,
    test_a_producer_that_fails_midway_leaves_no_object_and_no_upload,
    test_listings_are_paginated_and_counted,
    test_deletes_go_in_batches,
)
from tests.standins.s3sfs import S3sFsServer


@pytest.fixture(scope="module")
def s3s_fs(tmp_path_factory):
    with S3sFsServer(str(tmp_path_factory.mktemp("s3s-fs")), STORE_KEY_ID, STORE_SECRET) as server:
        yield server


@pytest.fixture(scope="module")
def bed(tmp_path_factory, docker_client, pg_container, s3s_fs, minio_server):
    bed = make_bed(str(tmp_path_factory.mktemp("backups-s3s-fs")), docker_client, pg_container, s3s_fs.url,
                   minio_server)
    bed.store().client.create_bucket(Bucket=BUCKET)
    return bed
