"""What a day's backup reads: when a day may be captured (`policy`), Postgres' census and dump (`postgres`), service
data folders (`volumes`) and the MinIO mirror (`mirror`). Never imports `restore`."""
