"""A stand-in server run as a subprocess of the test: started on a free loopback port (another one if the port was
taken between probing and binding), answered before it is handed out, its output kept for failure messages, and
stopped by its own pid when the block ends. Subclasses say how to start it and how to tell that it answers."""

import socket
import subprocess
import tempfile
import time


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`with Server(...) as s: s.url` — http://127.0.0.1:<port>."""

    name = "server"

    def __init__(self, start_timeout_s: float = 30.0):
        self.start_timeout_s = start_timeout_s
        self.port = 0
        self.url = ""
        self.proc: subprocess.Popen | None = None
        self._log = None

    def command(self, port: int) -> list[str]:
        raise NotImplementedError

    def answers(self) -> bool:
        """One probe of `url`: True when the server answered (OSError while it is not listening yet)."""
        raise NotImplementedError

    def env(self) -> dict | None:
        return None

    def start(self):
        for _ in range(3):  # the port may be taken between probing and binding: try another one
            self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            self._log = tempfile.TemporaryFile()
            self.proc = subprocess.Popen(self.command(self.port), stdout=self._log, stderr=subprocess.STDOUT,
                                         start_new_session=True, env=self.env())
            if self._wait_until_answering():
                return self
            self.stop()
        raise RuntimeError(f"{self.name} did not answer on 127.0.0.1 within {self.start_timeout_s:.0f}s")

    def _wait_until_answering(self) -> bool:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                if self.answers():
                    return True
            except OSError:
                pass
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

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
