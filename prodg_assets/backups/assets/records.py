"""What the materialisations recorded per backup partition (its manifest's key and sha256): the instance's side of
every audit and check."""

from __future__ import annotations

from typing import Mapping, Optional

import dagster as dg

from ...contract import META_MANIFEST_KEY, META_MANIFEST_SHA256
from ..proofs.audit import Recorded


def recorded_value(metadata: Mapping, key: str, default=None):
    entry = metadata.get(key)
    return default if entry is None else getattr(entry, "value", entry)


def recorded_metadata(instance: dg.DagsterInstance, asset: str, partition: str) -> Optional[Mapping]:
    """The metadata of the latest materialisation of `asset` for `partition`, or None."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition]), limit=1).records
    return records[0].asset_materialization.metadata if records else None


def to_recorded(partition: str, metadata: Mapping) -> Recorded:
    return Recorded(partition, str(recorded_value(metadata, META_MANIFEST_KEY, "")),
                    str(recorded_value(metadata, META_MANIFEST_SHA256, "")))


def recorded_partitions(instance: dg.DagsterInstance, asset: str, partitions: list[str]) -> dict[str, Recorded]:
    """Latest recorded materialisation per partition of `asset` among `partitions`."""
    out: dict[str, Recorded] = {}
    for start in range(0, len(partitions), 100):
        batch = partitions[start:start + 100]
        cursor = None
        while True:
            result = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=batch), limit=500,
                cursor=cursor)
            for record in result.records:  # newest first: the first seen per partition wins
                mat = record.asset_materialization
                if mat and mat.partition and mat.partition not in out:
                    out[mat.partition] = to_recorded(mat.partition, mat.metadata)
            if not result.has_more:
                break
            cursor = result.cursor
    return out
