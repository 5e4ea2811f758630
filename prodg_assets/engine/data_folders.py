"""A service's data folders before its container starts: made as `docker compose` would make them, and owned by the
service's own user, so an image that runs unprivileged (`user: "70:70"`) can write its data without ever running as
root.

Docker makes a missing bind source as root:root 0755, where an unprivileged service cannot write. prodg makes it
instead, owned by the service's `user:`. A folder that already exists is handed over only when it is really under
`host.data_root` (symlinks resolved): everything in it that another owner holds — the data of a service that ran as
root until now, or what a rolled-back root container wrote since — is given to the user, the folder itself last, so
an interrupted hand-over is finished by the next apply. Anywhere else (/var/log, /var/lib/docker) an existing folder
is never touched, and a folder that cannot be handed over fails the apply naming it."""

from __future__ import annotations

import os
from typing import Callable, Optional

from ..desired.model import NUMERIC_USER, ServiceSpec


class DataFolderError(RuntimeError):
    """A data folder could not be made or handed to the service's user: it names the folder and why."""


def numeric_user(user: Optional[str]) -> Optional[tuple[int, int]]:
    """(uid, gid) of a numeric `user:` ("70:70"; a uid alone ("472") gets group 0 here — the uid owns the folder
    either way); None for no user, root, or a name (the loader refuses a name on a service with a writable bind
    mount)."""
    match = NUMERIC_USER.match(user or "")
    if not match or int(match.group(1)) == 0:
        return None
    return int(match.group(1)), int(match.group(2) or 0)


def _under(path: str, root: str) -> bool:
    if not root:
        return False
    real_root = os.path.realpath(root).rstrip("/")
    return os.path.realpath(path).startswith(real_root + "/")


def prepare_data_folders(spec: ServiceSpec, data_root: str, log: Callable[[str], None]) -> list[str]:
    """Make the service's missing bind sources (folders outside the config tree) and hand its writable ones to its
    user. Returns the folders of which anything changed owner. Raises DataFolderError."""
    owner = numeric_user(spec.user)
    handed: list[str] = []
    for mount in spec.volumes:
        if mount.kind != "bind" or mount.config_path is not None:
            continue
        made, doing = False, "made"
        try:
            if not os.path.lexists(mount.source):
                os.makedirs(mount.source, exist_ok=True)
                made = True
            if owner is None or mount.read_only or os.path.islink(mount.source) \
                    or not os.path.isdir(mount.source) or not (made or _under(mount.source, data_root)):
                continue
            doing = f"handed to uid {owner[0]}"
            changed = _own_tree(mount.source, *owner)
        except OSError as exc:
            raise DataFolderError(f"{spec.name}: {exc.filename or mount.source} could not be {doing}: "
                                  f"{exc.strerror or exc}") from None
        if changed:
            handed.append(mount.source)
            log(f"{spec.name}: {mount.source} {'made and ' if made else ''}handed to uid {owner[0]}, gid {owner[1]} "
                f"(the service's user; {changed} entries) before its container starts")
    return handed


def _own_tree(top: str, uid: int, gid: int) -> int:
    """Everything under `top` that is not uid:gid's made so (symlinks themselves, never what they point to), `top`
    last; how many entries changed."""

    def fail(exc: OSError) -> None:
        raise exc

    changed = 0
    for folder, dirs, files in os.walk(top, onerror=fail):
        for name in dirs + files:
            path = os.path.join(folder, name)
            st = os.lstat(path)
            if (st.st_uid, st.st_gid) != (uid, gid):
                os.chown(path, uid, gid, follow_symlinks=False)
                changed += 1
    st = os.lstat(top)
    if (st.st_uid, st.st_gid) != (uid, gid):
        os.chown(top, uid, gid, follow_symlinks=False)
        changed += 1
    return changed
