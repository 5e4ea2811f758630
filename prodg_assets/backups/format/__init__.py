"""Bytes both ways, no I/O: zstd/gzip (`codec`), the age format (`crypt`), manifest signatures (`signing`)."""
