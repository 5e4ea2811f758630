"""A helper container: one command run from a service's own image, in the service's network namespace, its stdout
delivered through a FIFO instead of the exec API's stream.

The exec stream copies every write through containerd-shim and dockerd onto the API socket: for pg_dumpall that
alone took 2.6× the dump's own time at 1 GiB (bench/RESULTS.md). A FIFO is one kernel pipe between the helper and
prodg. It lives in a private folder (0700, root) under the deploy root, which prodg and the Engine see at the same
path (docs/PRODUCTION.md); the helper writes it as root with every capability dropped, on a read-only root
filesystem. Files the command needs (a password file) are written into the same folder, so no secret is in the
helper's configuration. The helper is removed whatever happens; closing the stream early kills it."""

from __future__ import annotations

import datetime
import fcntl
import os
import select
import shutil
import tempfile
import time
from typing import TYPE_CHECKING, Callable, Iterator, Mapping, Optional, Sequence

from ..contract import LABEL_HELPER
from ..lazy import docker_errors
from ..streams import ProducerFailed, read_ahead
from .exec import READ_BYTES, exec_run

if TYPE_CHECKING:
    import docker

HELPER_FOLDER = ".helpers"  # under the deploy root: one private folder per running helper
MOUNT = "/prodg-helper"  # where the helper sees its folder
PIPE_BYTES = 1 << 20


def helper_chunks(api: docker.APIClient, container: str, cmd: Sequence[str], *, shared_root: str,
                  files: Optional[Mapping[str, bytes]] = None, environment: Optional[Mapping[str, str]] = None,
                  what: str = "", redact: Callable[[str], str] = lambda s: s, idle_timeout_s: float = 600.0,
                  read_ahead_reads: int = 8, image: str = "", with_volumes: bool = False,
                  user: str = "", idle_setting: str = "") -> Iterator[bytes]:
    """The stdout of `cmd` run in a helper container from `container`'s image and network namespace, streamed
    through a FIFO under `shared_root`. `files` are written (0600) beside the FIFO; the command finds them under
    MOUNT and its stdout must go to MOUNT/out (the helper's shell redirects it there). Raises ProducerFailed after
    the last chunk when the helper's exit status is not 0 (its stderr's tail, redacted, in the message).
    `with_volumes`: the helper has `container`'s mounts at the same paths instead of its network (no network at
    all), runs as `container`'s user (so it reads what the service reads) unless `user` says otherwise, and from
    `image` when given. A user name is looked up in `container` and the folder handed over to its uid.
    `idle_timeout_s` without a byte stops the helper (killed and removed) and fails, naming `idle_setting` (the
    setting it comes from)."""
    what = what or cmd[0]
    try:
        target = api.inspect_container(container)
    except docker_errors.NotFound:
        raise ProducerFailed(f"{what}: container {container} does not exist") from None
    except docker_errors.APIError as exc:
        raise ProducerFailed(f"{what}: cannot inspect container {container}: {exc.explanation or exc}") from None
    if not target["State"].get("Running"):
        raise ProducerFailed(f"{what}: container {container} is not running")
    _sweep(api, shared_root)
    folder = _private_folder(shared_root, what)
    helper_id = ""
    fd = -1
    try:
        for name, data in (files or {}).items():
            _write_private(os.path.join(folder, name), data)
        fifo = os.path.join(folder, "out")
        os.mkfifo(fifo, 0o600)
        fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # before the writer: its open then never blocks
        try:
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        except OSError:  # above the host's pipe-max-size: the default 64 KiB pipe still works, only slower
            pass
        runs_as = _helper_user(api, container, user or (target["Config"].get("User") if with_volumes else ""), what)
        _hand_over(folder, runs_as)
        helper_id = _start_helper(api, target, cmd, folder, environment or {}, what, image, with_volumes, runs_as)
        yield from read_ahead(_fifo_output(api, fd, helper_id, container, what, idle_timeout_s, idle_setting),
                              read_ahead_reads,
                              what, lambda: _remove(api, helper_id))
        code = _exit_code(api, helper_id)
        if code != 0:
            status = "did not report an exit status" if code is None else f"exited with status {code}"
            detail = redact(_stderr_tail(api, helper_id))
            raise ProducerFailed(f"{what} (helper container of {container}) {status}"
                                 + (f": {detail}" if detail else ""))
    finally:
        if fd >= 0:
            os.close(fd)
        if helper_id:
            _remove(api, helper_id)
        shutil.rmtree(folder, ignore_errors=True)


def _sweep(api: docker.APIClient, shared_root: str, grace_s: float = 600) -> None:
    """What a killed run left: helpers that have exited, and folders (with their password files) no running helper
    mounts and older than `grace_s` (a helper may be starting right now in another run). Best effort."""
    parent = os.path.join(shared_root, HELPER_FOLDER)
    in_use = set()
    try:
        for helper in api.containers(all=True, filters={"label": LABEL_HELPER}):
            if helper["State"] == "running":
                in_use.update(m.get("Source", "") for m in helper.get("Mounts", []))
            elif helper["State"] in ("exited", "dead") and _exited_for(api, helper["Id"]) > grace_s:
                _remove(api, helper["Id"])  # its run had had time to read its status and remove it
        for name in os.listdir(parent) if os.path.isdir(parent) else []:
            path = os.path.join(parent, name)
            if path not in in_use and time.time() - os.stat(path).st_mtime > grace_s:
                shutil.rmtree(path, ignore_errors=True)
    except (OSError, docker_errors.APIError):  # nothing to sweep, or not now: the next helper tries again
        pass


def _exited_for(api: docker.APIClient, helper_id: str) -> float:
    finished = api.inspect_container(helper_id)["State"].get("FinishedAt", "")[:19]
    try:
        at = datetime.datetime.fromisoformat(finished).replace(tzinfo=datetime.timezone.utc)
    except ValueError:  # never ran
        return float("inf")
    return (datetime.datetime.now(datetime.timezone.utc) - at).total_seconds()


def _helper_user(api: docker.APIClient, container: str, user: str, what: str) -> str:
    """The helper's user as a numeric `uid[:gid]` (the host hands the helper's folder to it): as given when numeric
    (the service's own, e.g. Grafana's 472); a name (`postgres`) looked up in `container`, whose image the helper
    runs — 70 in Alpine's Postgres, 999 in Debian's; root only when no user is asked for."""
    if not user:
        return "0"
    uid, _, gid = user.partition(":")
    if uid.isdigit() and (not gid or gid.isdigit()):
        return user
    name = uid
    code, out, err = exec_run(api, container, ["sh", "-c", 'printf "%s:%s" "$(id -u "$1")" "$(id -g "$1")"', "sh",
                                               name], what=f"{what}: id {name}", timeout_s=30)
    ids = out.decode(errors="replace").strip()
    uid, _, gid = ids.partition(":")
    if code != 0 or not uid.isdigit() or not gid.isdigit():
        detail = err.decode(errors="replace").strip()[:200] or f"exit {code}"
        raise ProducerFailed(f"{what}: container {container} has no user {name!r} to run the helper as ({detail})")
    return ids


def _hand_over(folder: str, user: str) -> None:
    """The private folder and everything in it (FIFO, files) owned by the helper's user, still 0700/0600."""
    uid, _, gid = user.partition(":")
    if int(uid) == 0:
        return
    for path in [folder, *(os.path.join(folder, name) for name in os.listdir(folder))]:
        os.chown(path, int(uid), int(gid) if gid else -1)


def _private_folder(shared_root: str, what: str) -> str:
    parent = os.path.join(shared_root, HELPER_FOLDER)
    try:
        os.makedirs(parent, mode=0o700, exist_ok=True)
        return tempfile.mkdtemp(prefix="run-", dir=parent)  # 0700
    except OSError as exc:
        raise ProducerFailed(f"{what}: cannot make the helper's folder under {parent}: {exc.strerror}") from None


def _write_private(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _start_helper(api: docker.APIClient, target: dict, cmd: Sequence[str], folder: str,
                  environment: Mapping[str, str], what: str, image: str, with_volumes: bool, user: str) -> str:
    source = target["Name"].lstrip("/")
    if with_volumes:
        isolation = {"network_mode": "none", "volumes_from": [target["Id"]]}
    else:
        isolation = {"network_mode": f"container:{target['Id']}"}
    host_config = api.create_host_config(
        **isolation, binds={folder: {"bind": MOUNT, "mode": "rw"}},
        read_only=True, cap_drop=["ALL"], security_opt=["no-new-privileges"])
    created: dict = {}
    try:
        created = api.create_container(
            image=image or target["Image"], entrypoint=["sh", "-c", f'exec "$@" >{MOUNT}/out', "sh"],
            command=list(cmd), user=user, environment=dict(environment), labels={LABEL_HELPER: f"{what} of {source}"},
            name=f"{source}-{what}-{os.path.basename(folder)[4:]}", host_config=host_config, detach=True)
        api.start(created["Id"])
    except docker_errors.APIError as exc:
        if created:
            _remove(api, created["Id"])
        raise ProducerFailed(f"{what}: cannot start a helper container from {source}'s image: "
                             f"{exc.explanation or exc}") from None
    return created["Id"]


def _fifo_output(api: docker.APIClient, fd: int, helper_id: str, container: str, what: str,
                 idle_timeout_s: float, idle_setting: str = "") -> Iterator[bytes]:
    """What the helper writes into the FIFO, until it closes it, in pieces of READ_BYTES (the writer's small writes
    gathered here: one hand-over to the consumer per MiB, not per write). A helper that exits without ever opening
    the FIFO ends the output (its exit status says why); `idle_timeout_s` without a byte is a failure."""
    pending = bytearray()
    last = time.monotonic()
    while True:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if ready:
            data = _read(fd, READ_BYTES - len(pending))
            if data is None:  # EAGAIN: woken without data
                continue
            if not data:  # every writer has closed it
                break
            last = time.monotonic()
            pending += data
            if len(pending) >= READ_BYTES:
                yield bytes(pending)
                pending.clear()
            continue
        if pending:  # the writer paused: hand over what has come
            yield bytes(pending)
            pending.clear()
        if not _running(api, helper_id):  # exited without opening the FIFO (or just closed it: drain)
            while data := _read(fd, READ_BYTES):
                pending += data
            break
        if time.monotonic() - last > idle_timeout_s:
            raise ProducerFailed(f"{what} (helper container of {container}) wrote nothing for {idle_timeout_s:g}s"
                                 + (f" ({idle_setting})" if idle_setting else "") + ": stalled, stopped")
    if pending:
        yield bytes(pending)


def _read(fd: int, n: int) -> Optional[bytes]:
    try:
        return os.read(fd, n)
    except BlockingIOError:
        return None


def _running(api: docker.APIClient, helper_id: str) -> bool:
    try:
        return bool(api.inspect_container(helper_id)["State"].get("Running"))
    except docker_errors.APIError:
        return False


def _exit_code(api: docker.APIClient, helper_id: str, wait_s: float = 30.0) -> Optional[int]:
    try:
        return int(api.wait(helper_id, timeout=wait_s)["StatusCode"])
    except Exception:  # the Engine did not answer in time, or the helper is gone: no status to trust
        return None


def _stderr_tail(api: docker.APIClient, helper_id: str, lines: int = 15) -> str:
    try:
        return api.logs(helper_id, stdout=False, stderr=True, tail=lines).decode("utf-8", "replace").strip()
    except docker_errors.APIError:
        return ""


def _remove(api: docker.APIClient, helper_id: str) -> None:
    try:
        api.remove_container(helper_id, force=True)
    except docker_errors.NotFound:
        pass
    except docker_errors.APIError:  # being removed already, or the Engine is gone: nothing left to do from here
        pass
