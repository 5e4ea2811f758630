"""A service's data folders before its container starts: made as `docker compose` would make them, and owned by the
service's own user, so an image that runs unprivileged (`user: "70:70"`) can write its data without ever running as
root.

Docker makes a missing bind source as root:root 0755, where an unprivileged service cannot write. prodg makes it
instead, owned by the service's `user:`. A folder that already exists is handed over (everything in it, symlinks not
followed) only when it is under `host.data_root` and its owner is not the user: the one move of a service from root
to its own user. Anywhere else (/var/log, /var/lib/docker) an existing folder is never touched."""

from __future__ import annotations

import os
from typing import Callable, Optional

from ..desired.model import NUMERIC_USER, ServiceSpec


def numeric_user(user: Optional[str]) -> Optional[tuple[int, int]]:
    """(uid, gid) of a numeric `user:` ("70:70"; "472" alone is group 0, as Docker runs it); None for no user, root,
    or a name (the loader refuses a name on a service with a writable bind mount)."""
    match = NUMERIC_USER.match(user or "")
    if not match or int(match.group(1)) == 0:
        return None
    return int(match.group(1)), int(match.group(2) or 0)


def _under(path: str, root: str) -> bool:
    root = root.rstrip("/")
    return bool(root) and path.startswith(root + "/")


def prepare_data_folders(spec: ServiceSpec, data_root: str, log: Callable[[str], None]) -> list[str]:
    """Make the service's missing bind sources (folders outside the config tree) and hand its writable ones to its
    user. Returns the folders whose owner was changed."""
    owner = numeric_user(spec.user)
    handed: list[str] = []
    for mount in spec.volumes:
        if mount.kind != "bind" or mount.config_path is not None:
            continue
        made = False
        if not os.path.exists(mount.source):
            os.makedirs(mount.source, exist_ok=True)
            made = True
        if owner is None or mount.read_only or not os.path.isdir(mount.source):
            continue
        st = os.stat(mount.source)
        if (st.st_uid, st.st_gid) == owner or not (made or _under(mount.source, data_root)):
            continue
        _own_tree(mount.source, *owner)
        handed.append(mount.source)
        log(f"{spec.name}: {mount.source} {'made and ' if made else ''}handed to uid {owner[0]}, gid {owner[1]} "
            f"(the service's user) before its container starts")
    return handed


def _own_tree(top: str, uid: int, gid: int) -> None:
    os.chown(top, uid, gid)
    for folder, dirs, files in os.walk(top):
        for name in dirs + files:
            os.chown(os.path.join(folder, name), uid, gid, follow_symlinks=False)
