"""What bench/backup_throughput.py measures for one size, kept apart so that the script and its notes
(bench/backup_notes.py) both import it and neither imports the other: the backups against their baselines, the
routes alone, the restores."""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.fixtures import ChildRun

SAME_WORK_TARGET = 1.10  # the backup's wall ≤ this × the same work by the CLIs, through the same route (#28)


@dataclass
class Backups:
    repeats: int
    plain: list = field(default_factory=list)  # reported: (s, CPU split) of pg_dumpall > /dev/null
    gz: list = field(default_factory=list)  # baseline: (s, CPU split) of pg_dumpall | gzip, once
    gz_bytes: int = 0
    same: list = field(default_factory=list)  # baseline: (ChildRun, CPU split) of the same work by the CLIs
    pipe: list = field(default_factory=list)  # measured: (ChildRun, CPU split, key) of postgres_backup

    @property
    def best_plain(self) -> tuple[float, dict]:
        return min(self.plain, key=lambda x: x[0])

    @property
    def best_same(self) -> tuple[ChildRun, dict]:
        """The same-work baseline: `pg_dumpall | zstd -3 | age -r RECIPIENT > /dev/null` through the backup's
        route (helper container → FIFO → this machine's process), the fastest of the run."""
        return min(self.same, key=lambda x: x[0].result["wall"])

    @property
    def best(self) -> tuple[ChildRun, dict, str]:
        return min(self.pipe, key=lambda x: x[0].result["wall"])

    @property
    def rss(self) -> float:
        return max(p[0].maxrss_mb for p in self.pipe)

    @property
    def same_ratio(self) -> float:
        """The backup's wall against the same work by the CLIs (the target: ≤ SAME_WORK_TARGET)."""
        return self.best[0].result["wall"] / self.best_same[0].result["wall"]

    @property
    def plain_ratio(self) -> float:
        """The backup's wall against the raw dump, pg_dumpall > /dev/null in its container (reported)."""
        return self.best[0].result["wall"] / self.best_plain[0]

    @property
    def completion_s(self) -> float:
        """The store's completion after the last byte: moto's CompleteMultipartUpload (and the manifest's PUT)."""
        s3 = self.best[0].result["s3"]
        return sum(v[1] for k, v in s3.items() if k in ("CompleteMultipartUpload", "CopyObject", "PutObject"))


@dataclass
class Stream:
    run: ChildRun  # baseline: the helper's FIFO into Python, dropped
    cpu: dict
    exec_run: ChildRun  # the exec stream into Python, dropped (the route an Engine on another machine takes)
    exec_cpu: dict
    cli_s: float  # diagnostic: `docker exec … > /dev/null`

    @property
    def wall(self) -> float:
        return self.run.result["wall"]

    @property
    def exec_wall(self) -> float:
        return self.exec_run.result["wall"]


@dataclass
class Restores:
    repeats: int
    pipes: list = field(default_factory=list)  # measured: (ChildRun, CPU split, census findings)
    bases: list = field(default_factory=list)  # baseline: (s, CPU split, psql's ERROR lines, census findings)

    @property
    def best_pipe(self) -> tuple[ChildRun, dict, list]:
        return min(self.pipes, key=lambda x: x[0].result["wall"])

    @property
    def best_base(self) -> tuple[float, dict, list, list]:
        return min(self.bases, key=lambda x: x[0])
