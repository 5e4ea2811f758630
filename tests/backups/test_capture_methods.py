"""Each capture method prodg.yaml may name builds its own target's asset, and nothing else: the schema's list of
methods and the builders' registry are the same names, and a target with a method outside them is an error naming the
target, never (as the old if/elif's last branch did) the secrets file's asset."""

import pytest

from prodg_assets.backups.assets.definitions import CAPTURE_METHODS, capture_builder
from prodg_assets.backups.assets.volume_targets import build_secrets_backup, build_volume_backup
from prodg_assets.desired.schema import PRODG_SCHEMA
from prodg_assets.settings import BackupTarget


def test_the_schema_and_the_registry_name_the_same_methods():
    method = PRODG_SCHEMA["backups"]["targets"].schema.schema["method"].schema
    assert set(method.choices) == set(CAPTURE_METHODS)


def test_each_method_has_its_own_builder():
    assert capture_builder(BackupTarget("redis", "volume", "redis/", 30)) is build_volume_backup
    assert capture_builder(BackupTarget("secrets", "secrets_file", "secrets/", 90)) is build_secrets_backup
    assert len(set(CAPTURE_METHODS.values())) == len(CAPTURE_METHODS)


def test_an_unknown_method_is_an_error_naming_the_target():
    known = "config_archive, dagster_storage, pg_dumpall, s3_mirror, secrets_file, volume"
    with pytest.raises(ValueError, match=f"backup target 'media': unknown capture method 'rsync' \\(known: {known}\\)"):
        capture_builder(BackupTarget("media", "rsync", "media/", 30))
