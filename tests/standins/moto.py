"""moto_server as a local S3 endpoint (it stands in for MinIO and for Backblaze B2): started as a subprocess on a free
loopback port, answered before it is handed out, stopped (by its own pid) when the block ends."""

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoServer:
    """`with MotoServer() as s3: s3.url` — an S3 API on http://127.0.0.1:<port>. Any credentials are accepted."""

    def __init__(self, start_timeout_s: float = 30.0):
        self.start_timeout_s = start_timeout_s
        self.port = 0
        self.url = ""
        self.proc: subprocess.Popen | None = None
        self._log = None

    def start(self) -> "MotoServer":
        exe = os.path.join(os.path.dirname(sys.executable), "moto_server")
        for _ in range(3):  # the port may be taken between probing and binding: try another one
            self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            self._log = tempfile.TemporaryFile()
            self.proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(self.port)], stdout=self._log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
            if self._wait_until_answering():
                return self
            self.stop()
        raise RuntimeError(f"moto_server did not answer on 127.0.0.1 within {self.start_timeout_s:.0f}s")

    def _wait_until_answering(self) -> bool:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{self.url}/moto-api/", timeout=2):
                    return True
            except OSError:
                time.sleep(0.1)
        return False

    def log_tail(self, limit: int = 4000) -> str:
        if not self._log:
            return ""
        self._log.seek(0)
        return self._log.read().decode("utf-8", "replace")[-limit:]

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self._log:
            self._log.close()
            self._log = None

    def __enter__(self) -> "MotoServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
