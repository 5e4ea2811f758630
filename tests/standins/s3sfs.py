"""s3s-fs as a second, independent S3 endpoint: a Rust S3 server (the s3s project) that keeps buckets and objects as
files under a folder, built from crates.io by docker/dev/install.sh (the dev profile's backup store). Started as a
subprocess on a free loopback port with the given keys (SigV4 checked), answered before it is handed out, stopped
(by its own pid) when the block ends. A bucket is a folder under the root."""

import os
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

from tests.conftest import ROOT
from tests.standins.moto import free_port

BINARY = os.path.join(ROOT, ".prodg", "tools", "bin", "s3s-fs")


class S3sFsServer:
    """`with S3sFsServer(root, key_id, secret) as s3: s3.url` — an S3 API on http://127.0.0.1:<port>."""

    def __init__(self, root: str, access_key_id: str, secret_access_key: str, start_timeout_s: float = 30.0):
        self.root, self.access_key_id, self.secret_access_key = root, access_key_id, secret_access_key
        self.start_timeout_s = start_timeout_s
        self.port = 0
        self.url = ""
        self.proc: subprocess.Popen | None = None
        self._log = None

    def start(self) -> "S3sFsServer":
        if not os.access(BINARY, os.X_OK):
            raise RuntimeError(f"{BINARY} is missing: docker/dev/install.sh builds it (cargo install s3s-fs)")
        os.makedirs(self.root, exist_ok=True)
        for _ in range(3):  # the port may be taken between probing and binding: try another one
            self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            self._log = tempfile.TemporaryFile()
            self.proc = subprocess.Popen(
                [BINARY, "--host", "127.0.0.1", "--port", str(self.port), "--access-key", self.access_key_id,
                 "--secret-key", self.secret_access_key, self.root],
                stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, "NO_COLOR": "1"})
            if self._wait_until_answering():
                return self
            self.stop()
        raise RuntimeError(f"s3s-fs did not answer on 127.0.0.1 within {self.start_timeout_s:.0f}s")

    def _wait_until_answering(self) -> bool:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(self.url, timeout=2):
                    return True
            except urllib.error.HTTPError:  # an unsigned request refused: it answers
                return True
            except OSError:
                time.sleep(0.1)
        return False

    def create_bucket(self, name: str) -> None:
        os.makedirs(os.path.join(self.root, name), exist_ok=True)

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

    def __enter__(self) -> "S3sFsServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
