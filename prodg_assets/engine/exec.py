"""Processes in containers through the Engine's exec API: streamed output with a read-ahead thread, stdin, exit
status, and the kill of a process the consumer gave up on. Also `reblocked`, which makes a process write its stdout
in 1 MiB blocks (the Engine frames every write). Used by the backups (dumps, restores, censuses). Just over 300
lines: one process protocol (gate, frames, kill) and its two consumers (streamed, whole)."""

from __future__ import annotations

import os
import socket
import struct
import time
from typing import TYPE_CHECKING, Callable, Iterator, Mapping, Optional, Sequence

from ..lazy import docker_errors
from ..streams import ProducerFailed, TailBuffer, read_ahead

if TYPE_CHECKING:
    import docker

STDOUT, STDERR = 1, 2
READ_BYTES = 1 << 20  # one read of an exec's output socket, at most


class ContainerExec:
    """One process in a container through the Engine's exec API, on the hijacked exec socket.

    The socket (rather than `exec_start(stream=True)`) lets us write stdin and half-close it. Closing the stream
    does not end the process (the Engine drains its output to nowhere), so a process still running when the
    consumer gives up is killed: the exec carries a random token in its environment, inherited by its children
    (pg_dumpall's pg_dump), and a second exec as root sends TERM to every process holding it. The command is
    gated behind one line on stdin (`read`): the SDK parses the HTTP upgrade response through a buffered reader and
    then reads the raw socket, so output the process wrote before the headers were parsed could be lost; the gate
    makes the process wait until we are reading."""

    GATE = 'read -r _ || exit 125; exec "$@"'

    def __init__(self, api: docker.APIClient, container: str, cmd: Sequence[str], *, user: str = "",
                 environment: Optional[Mapping[str, str]] = None, what: str = "", idle_timeout_s: float = 600.0,
                 idle_setting: str = ""):
        self.api, self.container, self.cmd = api, container, list(cmd)
        self.idle_setting = idle_setting  # the setting idle_timeout_s comes from, named when it passes
        self.user, self.environment = user, dict(environment or {})
        self.what = what or cmd[0]
        self.idle_timeout_s = idle_timeout_s
        self.exec_id = ""
        self._sock = None
        self.token = os.urandom(8).hex()

    def start(self) -> "ContainerExec":
        try:
            self.exec_id = self.api.exec_create(
                self.container, ["sh", "-c", self.GATE, "sh", *self.cmd], stdin=True, stdout=True, stderr=True,
                tty=False, user=self.user, environment={**self.environment, "PRODG_EXEC_TOKEN": self.token})["Id"]
            self._sock = self.api.exec_start(self.exec_id, socket=True)
        except docker_errors.APIError as exc:
            raise ProducerFailed(f"{self.what}: cannot run in container {self.container}: "
                                 f"{exc.explanation or exc}") from None
        self._raw.settimeout(self.idle_timeout_s)
        self.send(b"\n")  # open the gate
        return self

    @property
    def _raw(self):
        return getattr(self._sock, "_sock", self._sock)  # SocketIO → socket; paramiko channels stay as they are

    def send(self, data: bytes) -> None:
        self._raw.sendall(data)

    def close_stdin(self) -> None:
        raw = self._raw
        if hasattr(raw, "shutdown_write"):
            raw.shutdown_write()
        else:
            raw.shutdown(socket.SHUT_WR)

    def frames(self) -> Iterator[tuple[int, bytes]]:
        """(stream, data) frames of the multiplexed output until the process closes it. A truncated frame, a
        broken connection or `idle_timeout_s` without a byte raise ProducerFailed. (The SDK's own frame reader
        polls without a timeout, so a stalled process would hang it forever.)"""
        while True:
            header = self._read_exactly(8)
            if header is None:
                return
            stream, size = struct.unpack(">BxxxL", header)
            if size:
                data = self._read_exactly(size)
                if data is None:
                    raise ProducerFailed(f"{self.what} in {self.container}: output ended inside a frame")
                yield stream, data

    def output(self) -> Iterator[tuple[bytes, bytes]]:
        """(stdout, stderr) demultiplexed from each read of the socket (up to READ_BYTES), until the process closes
        its output: the frames that one read completed, joined — one bytes object per stream and read instead of
        one per frame (the Engine frames every write of the process, often 4–32 KiB). Same failures as frames()."""
        pending = bytearray()
        while True:
            data = self._recv(READ_BYTES)
            if not data:
                if pending:
                    raise ProducerFailed(f"{self.what} in {self.container}: output ended inside a frame")
                return
            pending += data
            out: list = []
            err: list = []
            pos, end = 0, len(pending)
            with memoryview(pending) as view:
                while end - pos >= 8:
                    stream, size = struct.unpack_from(">BxxxL", view, pos)
                    if end - pos - 8 < size:
                        break
                    if size:
                        (err if stream == STDERR else out).append(view[pos + 8:pos + 8 + size])
                    pos += 8 + size
                stdout, stderr = b"".join(out), b"".join(err)
                out.clear()
                err.clear()
            del pending[:pos]
            if stdout or stderr:
                yield stdout, stderr

    def _recv(self, n: int) -> bytes:
        try:
            return self._raw.recv(n)
        except socket.timeout:
            raise ProducerFailed(self._stalled()) from None
        except OSError as exc:
            raise ProducerFailed(f"{self.what} in {self.container}: output stream broke off ({exc})") from None

    def _stalled(self) -> str:
        return (f"{self.what} in {self.container} wrote nothing for {self.idle_timeout_s:g}s"
                + (f" ({self.idle_setting})" if self.idle_setting else "") + ": stalled, stopped")

    def _read_exactly(self, n: int) -> Optional[bytes]:
        """n bytes, or None at a clean end of stream."""
        buf = bytearray()
        while len(buf) < n:
            try:
                chunk = self._raw.recv(min(n - len(buf), 1 << 20))
            except socket.timeout:
                raise ProducerFailed(self._stalled()) from None
            except OSError as exc:
                raise ProducerFailed(f"{self.what} in {self.container}: output stream broke off ({exc})") from None
            if not chunk:
                if buf:
                    raise ProducerFailed(f"{self.what} in {self.container}: output ended inside a frame")
                return None
            buf += chunk
        return bytes(buf)

    def exit_code(self, wait_s: float = 30.0) -> Optional[int]:
        """The process's exit status once the Engine reports it finished; None if it does not within `wait_s`."""
        deadline = time.monotonic() + wait_s
        while True:
            info = self.api.exec_inspect(self.exec_id)
            if not info.get("Running") and info.get("ExitCode") is not None:
                return int(info["ExitCode"])
            if time.monotonic() > deadline:
                return None
            time.sleep(0.05)

    KILL = ('for p in /proc/[0-9]*; do grep -q "PRODG_EXEC_TOKEN=$1" "$p/environ" 2>/dev/null && '
            'kill -TERM "${p#/proc/}" 2>/dev/null; done; true')

    def kill_if_running(self) -> None:
        """TERM every process of this exec (and its children) still running in the container; best effort."""
        if not self.exec_id:
            return
        try:
            if not self.api.exec_inspect(self.exec_id).get("Running"):
                return
            killer = self.api.exec_create(self.container, ["sh", "-c", self.KILL, "sh", self.token], user="0",
                                          stdout=False, stderr=False)["Id"]
            self.api.exec_start(killer, detach=True)
            deadline = time.monotonic() + 10
            while self.api.exec_inspect(killer).get("Running") and time.monotonic() < deadline:
                time.sleep(0.05)
        except Exception:  # the container or the Engine is gone: nothing left to kill from here
            pass

    def close(self) -> None:
        if self._sock is None:
            return
        self.kill_if_running()
        try:  # wakes a thread blocked reading the socket (close alone would not)
            self._raw.shutdown(socket.SHUT_RDWR)
        except Exception:  # already broken or closed: nothing to wake
            pass
        for obj in (self._raw, self._sock, getattr(self._sock, "_response", None)):
            try:
                if obj is not None:
                    obj.close()
            except Exception:  # closing a half-broken stream: nothing left to save
                pass
        self._sock = None


READ_AHEAD = 24  # reads (≤ READ_BYTES each) an exec_chunks producer holds ahead of its consumer


def exec_chunks(api: docker.APIClient, container: str, cmd: Sequence[str], *, user: str = "",
                environment: Optional[Mapping[str, str]] = None, what: str = "",
                redact: Callable[[str], str] = lambda s: s, idle_timeout_s: float = 600.0,
                read_ahead_reads: int = READ_AHEAD, idle_setting: str = "") -> Iterator[bytes]:
    """The stdout of `cmd` run in `container`, streamed `read_ahead` of the consumer; raises ProducerFailed after
    the last chunk when the exit status is non-zero or unknown (stderr's tail, redacted, in the message). Closing
    the generator early shuts the exec socket down, which ends the process by SIGPIPE (and kills what is left)."""
    proc = ContainerExec(api, container, cmd, user=user, environment=environment, what=what,
                         idle_timeout_s=idle_timeout_s, idle_setting=idle_setting).start()
    stderr = TailBuffer()

    def stdout() -> Iterator[bytes]:
        for out, err in proc.output():
            if err:
                stderr.write(err)
            if out:
                yield out

    try:
        proc.close_stdin()
        yield from read_ahead(stdout(), read_ahead_reads, proc.what, proc.close)
        code = proc.exit_code()
    finally:
        proc.close()
    if code != 0:
        status = "did not report an exit status" if code is None else f"exited with status {code}"
        detail = stderr.text(redact)
        raise ProducerFailed(f"{proc.what} in container {container} {status}" + (f": {detail}" if detail else ""))


def exec_run(api: docker.APIClient, container: str, cmd: Sequence[str], *, user: str = "",
             environment: Optional[Mapping[str, str]] = None, what: str = "", stdin: bytes = b"",
             timeout_s: float = 120.0) -> tuple[Optional[int], bytes, bytes]:
    """(exit status, stdout, stderr) of a short command in `container`."""
    proc = ContainerExec(api, container, cmd, user=user, environment=environment, what=what,
                         idle_timeout_s=timeout_s).start()
    out, err = bytearray(), bytearray()
    try:
        if stdin:
            proc.send(stdin)
        proc.close_stdin()
        for stream, data in proc.frames():
            (out if stream == STDOUT else err).extend(data)
        return proc.exit_code(), bytes(out), bytes(err)
    finally:
        proc.close()


# `"$@"` with its stdout re-blocked into 1 MiB writes by dd, in any POSIX sh (dash, busybox ash: no pipefail). The
# Engine frames every write the process makes and copies each through containerd-shim and dockerd: pg_dumpall
# writes through stdio (4 KiB buffers with glibc, 1 KiB with musl), and those small writes cost more CPU in the
# Engine and in our reader than the dump itself (bench/RESULTS.md). Exits with the first non-zero status of the
# command and dd (a dd that died would otherwise truncate a dump whose command succeeded).
# Both statuses come back tagged (c: the command, d: dd), in whichever order they finish: a broken dd is reported
# with its own status (the command then only saw a closed pipe, and may have been killed by SIGPIPE before it could
# report), otherwise the command's; a status that never came back is a failure (1).
REBLOCK = ('exec 4>&1; set -- $( { { "$@"; echo "c$?" >&3; } | '
           '{ dd bs=1048576 iflag=fullblock 2>/dev/null >&4; echo "d$?" >&3; }; } 3>&1 ); '
           'c=; d=; for s; do case "$s" in c*) c=${s#c};; d*) d=${s#d};; esac; done; '
           '[ -n "$d" ] || exit 1; [ "$d" = 0 ] || exit "$d"; [ -n "$c" ] || exit 1; exit "$c"')


def reblocked(cmd: Sequence[str]) -> list[str]:
    """`cmd` with its stdout written in 1 MiB blocks (REBLOCK); needs only sh and dd (busybox has both)."""
    return ["sh", "-c", REBLOCK, "sh", *cmd]
