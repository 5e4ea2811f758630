"""The off-site store: the S3 client (`client`), object keys (`keys`), manifests written and read back (`manifest`),
the encrypting upload stream (`stream`), the verified download (`download`) and retention (`retention`). Imports only
`format` below it."""
