"""What a restore writes: a dump into Postgres (`postgres`), a mirror into MinIO (`minio`), data folders and the
secrets file (`files`, laid out by `untar`), and `prodg restore` (`commands`). Never imports `capture`."""
