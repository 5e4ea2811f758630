"""moto_server as a local S3 endpoint (it stands in for MinIO and for Backblaze B2): started as a subprocess on a free
loopback port, answered before it is handed out, stopped (by its own pid) when the block ends. Given access keys, it
authenticates requests (moto_auth.py): only those keys, with a valid SigV4 signature, are answered."""

import json
import os
import sys
import urllib.request

from tests.standins.process import ServerProcess

AUTH_LAUNCHER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "moto_auth.py")


class MotoServer(ServerProcess):
    """`with MotoServer() as s3: s3.url` — an S3 API on http://127.0.0.1:<port>. Any credentials are accepted, unless
    `keys` ({key_id: secret}) is given: then only those, in requests signed with them."""

    name = "moto_server"

    def __init__(self, start_timeout_s: float = 30.0, keys: dict[str, str] | None = None):
        super().__init__(start_timeout_s)
        self.keys = dict(keys or {})

    def command(self, port: int) -> list[str]:
        if self.keys:
            return [sys.executable, "-P", AUTH_LAUNCHER, "-H", "127.0.0.1", "-p", str(port)]
        return [os.path.join(os.path.dirname(sys.executable), "moto_server"), "-H", "127.0.0.1", "-p", str(port)]

    def env(self) -> dict | None:
        if not self.keys:
            return None
        return {**os.environ, "MOTO_AUTH_KEYS": json.dumps(self.keys)}

    def answers(self) -> bool:
        with urllib.request.urlopen(f"{self.url}/moto-api/", timeout=2):
            return True
