"""A unix-socket proxy in front of the Docker Engine's socket, which can vanish mid-conversation and come back.

prodg reaches the Engine through DOCKER_HOST, so pointing it at `unix://<proxy path>` puts this proxy on every call.
`cut()` closes the listener and every open connection and removes the socket file — to the client exactly what a
dockerd that went away looks like (connections reset, then "no such file"). `arm_cut(pattern, after_s)` cuts that
many seconds after the first request whose request line contains `pattern` (e.g. b"/start HTTP"), so a fault lands
at a chosen step of an apply. `restore()` listens again.
"""

import os
import re
import socket
import threading
import time
from typing import Optional


class EngineSocketProxy:
    def __init__(self, path: str, target: str = "/var/run/docker.sock"):
        self.path, self.target = path, target
        self.requests: list[bytes] = []  # request lines seen, in order
        self.cuts = 0
        self._lock = threading.Lock()
        self._listener: Optional[socket.socket] = None
        self._conns: list[socket.socket] = []
        self._armed: Optional[tuple[re.Pattern, float]] = None

    @property
    def url(self) -> str:
        return f"unix://{self.path}"

    def __enter__(self) -> "EngineSocketProxy":
        self.restore()
        return self

    def __exit__(self, *exc) -> None:
        self.cut()

    def restore(self) -> None:
        with self._lock:
            if self._listener is not None:
                return
            if os.path.exists(self.path):
                os.unlink(self.path)
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(self.path)
            listener.listen(64)
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = self._conns, []
            self._armed = None
            if listener is not None:
                self.cuts += 1
        for s in ([listener] if listener else []) + conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        if os.path.exists(self.path):
            os.unlink(self.path)

    def arm_cut(self, pattern: bytes, after_s: float = 0.0) -> None:
        self._armed = (re.compile(pattern), after_s)

    @property
    def is_up(self) -> bool:
        return self._listener is not None

    # -- plumbing --------------------------------------------------------------------------------------------------
    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                upstream.connect(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    upstream.close()
                    return
                self._conns += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                return
            if from_client:
                self._watch(data)
            try:
                dst.sendall(data)
            except OSError:
                return

    def _watch(self, data: bytes) -> None:
        for line in re.findall(rb"(?m)^(?:GET|POST|PUT|DELETE|HEAD) [^\r\n]*", data):
            self.requests.append(line)
            armed = self._armed
            if armed and armed[0].search(line):
                self._armed = None
                if armed[1] <= 0:
                    threading.Thread(target=self.cut, daemon=True).start()
                else:
                    threading.Timer(armed[1], self.cut).start()

    def wait_cut(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.is_up and time.monotonic() < deadline:
            time.sleep(0.05)
        return not self.is_up
