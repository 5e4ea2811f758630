"""s3s-fs as a second, independent S3 endpoint: a Rust S3 server (the s3s project) that keeps buckets and objects as
files under a folder, built from crates.io by docker/dev/install.sh (the dev profile's backup store). Started as a
subprocess on a free loopback port with the given keys (SigV4 checked), answered before it is handed out, stopped
(by its own pid) when the block ends."""

import os
import urllib.error
import urllib.request

from tests.conftest import ROOT
from tests.standins.process import ServerProcess

BINARY = os.path.join(ROOT, ".prodg", "tools", "bin", "s3s-fs")


class S3sFsServer(ServerProcess):
    """`with S3sFsServer(root, key_id, secret) as s3: s3.url` — an S3 API on http://127.0.0.1:<port>."""

    name = "s3s-fs"

    def __init__(self, root: str, access_key_id: str, secret_access_key: str, start_timeout_s: float = 30.0):
        super().__init__(start_timeout_s)
        self.root, self.access_key_id, self.secret_access_key = root, access_key_id, secret_access_key

    def start(self) -> "S3sFsServer":
        if not os.access(BINARY, os.X_OK):
            raise RuntimeError(f"{BINARY} is missing: docker/dev/install.sh builds it (cargo install s3s-fs)")
        os.makedirs(self.root, exist_ok=True)
        return super().start()

    def command(self, port: int) -> list[str]:
        return [BINARY, "--host", "127.0.0.1", "--port", str(port), "--access-key", self.access_key_id,
                "--secret-key", self.secret_access_key, self.root]

    def env(self) -> dict:
        return {**os.environ, "NO_COLOR": "1"}

    def answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.url, timeout=2):
                return True
        except urllib.error.HTTPError:  # an unsigned request refused: it answers
            return True
