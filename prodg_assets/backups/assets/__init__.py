"""The Dagster side of the backups, and only it: the partition recipe (`recipe`), the targets' assets (`targets`,
`volume_targets`), the checks, the drill and audit assets, the rotation, the slice (`definitions`)."""
