"""One apply at a time per service, across processes: an exclusive `flock` on a file per service.

Dagster's pools say the same (one slot per service asset), but claiming a pool slot on SQLite storage is not atomic
(a known Dagster limitation) and the break-glass `prodg deploy` runs outside the run queue. This lock holds whatever
storage, executor or launcher runs the step, as long as the runs share the host's filesystem (production's run
containers all mount /opt/prodg). The kernel drops a lock when its process dies, so a killed run never leaves one.
The checks that read a service take the same lock shared: they never probe a container another run is swapping.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from typing import Callable, Iterator

LOCK_FOLDER = ".locks"  # under the deploy root


@contextlib.contextmanager
def service_lock(deploy_root: str, project: str, service: str, log: Callable[[str], None] = lambda _: None,
                 shared: bool = False) -> Iterator[None]:
    """Held while one run decides about and applies `service` (exclusive); a second run waits here and says so in
    its log. `shared`: a check that reads the service (a probe, the drift check) — any number at once, never
    during an apply."""
    folder = os.path.join(deploy_root, LOCK_FOLDER)
    os.makedirs(folder, exist_ok=True)
    fd = os.open(os.path.join(folder, f"{project}.{service}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"{service}: another run is applying it; waiting for that apply to finish")
            fcntl.flock(fd, mode)
        yield
    finally:
        os.close(fd)
