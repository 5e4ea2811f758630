"""Measuring helpers for the benchmarks: memory of this process, time spent inside an iterator, CPU seconds of
each party on the machine (a process, a container's cgroup, the Docker daemons, the whole host) between two
snapshots, and the formatting of seconds, throughput and CPU splits. Standard library only: the measured child
processes import this too."""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass

MB = 1e6
TICK = os.sysconf("SC_CLK_TCK")


def vm(field_name: str) -> float:
    """VmRSS / VmHWM of this process, MB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


class Timed:
    """An iterator that adds up the time spent inside the wrapped iterator's __next__."""

    def __init__(self, it):
        self.it, self.s, self.items = iter(it), 0.0, 0

    def __iter__(self):
        return self

    def __next__(self):
        t0 = time.perf_counter()
        try:
            item = next(self.it)
        finally:
            self.s += time.perf_counter() - t0
        self.items += 1
        return item


def proc_cpu(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            parts = fh.read().rsplit(")", 1)[1].split()
        return (int(parts[11]) + int(parts[12])) / TICK
    except (OSError, IndexError, ValueError):
        return 0.0


def docker_daemons() -> dict[int, str]:
    """dockerd, containerd and the shims ("docker"); fuse-overlayfs, which serves container file systems when
    that is the Engine's storage driver ("fuse")."""
    pids = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as fh:
                    comm = fh.read().strip()
            except OSError:
                continue
            if comm in ("dockerd", "containerd") or comm.startswith("containerd-shim"):
                pids[int(entry)] = "docker"
            elif comm.startswith("fuse-overlayfs"):
                pids[int(entry)] = "fuse"
    return pids


def container_cpu(container_id: str) -> float:
    """CPU seconds used by the processes of a container (cgroup v1 or v2); 0 when the cgroup cannot be read."""
    for path, kind in ((f"/sys/fs/cgroup/cpuacct/docker/{container_id}/cpuacct.usage", "ns"),
                       (f"/sys/fs/cgroup/system.slice/docker-{container_id}.scope/cpu.stat", "v2"),
                       (f"/sys/fs/cgroup/docker/{container_id}/cpu.stat", "v2")):
        try:
            with open(path) as fh:
                text = fh.read()
        except OSError:
            continue
        if kind == "ns":
            return int(text.strip()) / 1e9
        match = re.search(r"usage_usec (\d+)", text)
        if match:
            return int(match.group(1)) / 1e6
    return 0.0


def host_busy() -> float:
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / TICK


@dataclass
class CpuSnap:
    t: float
    host: float
    moto: float
    daemons: dict
    containers: dict

    @classmethod
    def take(cls, moto_pid: int, container_ids: dict) -> "CpuSnap":
        return cls(time.perf_counter(), host_busy(), proc_cpu(moto_pid),
                   {p: (kind, proc_cpu(p)) for p, kind in docker_daemons().items()},
                   {name: container_cpu(cid) for name, cid in container_ids.items()})


def cpu_split(before: CpuSnap, after: CpuSnap, own_child_s: float = 0.0, host_side_s: float = 0.0) -> dict:
    """CPU seconds between two snapshots: each party, and 'other' = the machine's busy time not accounted for
    (concurrent test runs, the kernel's share of our I/O)."""
    daemons = {"docker": 0.0, "fuse": 0.0}
    for p, (kind, value) in after.daemons.items():
        daemons[kind] += value - before.daemons.get(p, (kind, 0.0))[1]
    containers = {n: after.containers[n] - before.containers.get(n, 0.0) for n in after.containers}
    out = {"wall": after.t - before.t, "busy": after.host - before.host, "moto": after.moto - before.moto,
           "docker": daemons["docker"], "fuse-overlayfs": daemons["fuse"], "child": own_child_s,
           "host_tools": host_side_s, **{f"ct:{n}": v for n, v in containers.items()}}
    out["other"] = (out["busy"] - out["moto"] - sum(daemons.values()) - own_child_s - host_side_s
                    - sum(containers.values()))
    return out


def fmt_cpu(split: dict) -> str:
    parts = [f"{k[3:] if k.startswith('ct:') else k} {v:.1f}" for k, v in split.items()
             if k not in ("wall", "busy") and abs(v) >= 0.05]
    cores = os.cpu_count() or 1
    return (f"CPU s over {split['wall']:.1f} s wall: " + ", ".join(parts)
            + f" (machine {100 * split['busy'] / (split['wall'] * cores):.0f}% busy of {cores} cores)")


def fmt_s(s: float) -> str:
    return f"{s:.1f} s" if s < 100 else f"{s:.0f} s"


def mbps(raw: int, s: float) -> str:
    return f"{raw / MB / s:.0f} MB/s" if s > 0 else "—"
