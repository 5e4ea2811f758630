"""Evidence that the backups can be restored: the store audit from the manifests (`audit`), restore drills into
scratch Postgres containers (`drills`), and what a restored day is verified against (`verify`)."""
