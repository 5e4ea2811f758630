"""Backups: every piece of state as an encrypted, locked, manifested daily partition in an off-site S3 store, and the
evidence that each day can be restored.

Six rooms; imports run one way, down this list (`capture` and `restore` never import each other):
- `assets/`  Dagster only: one recipe (`run_partition`) each target calls with its own `produce`, the checks, the
  drill rotation, the slice (`definitions.py`).
- `proofs/`  the audit, restore drills and verification of a restored day.
- `capture/` what is read for a day (the capture policy, pg_dumpall, volumes, the MinIO mirror) and
  `restore/` what is written back (Postgres, MinIO, files, `prodg restore`).
- `store/`   the S3 client, object keys, manifests, the encrypting upload stream, the verified download, retention.
- `format/`  bytes both ways: compression, age encryption, manifest signatures.

A day's data flows producer (capture) → format (zstd, age) → store (multipart upload, manifest last); a restore reads
the manifest → verified download → format (decrypt, decompress) → the target (restore).
"""
