"""moto_server as a local S3 endpoint (it stands in for MinIO and for Backblaze B2): started as a subprocess on a free
loopback port, answered before it is handed out, stopped (by its own pid) when the block ends."""

import os
import sys
import urllib.request

from tests.standins.process import ServerProcess


class MotoServer(ServerProcess):
    """`with MotoServer() as s3: s3.url` — an S3 API on http://127.0.0.1:<port>. Any credentials are accepted."""

    name = "moto_server"

    def command(self, port: int) -> list[str]:
        return [os.path.join(os.path.dirname(sys.executable), "moto_server"), "-H", "127.0.0.1", "-p", str(port)]

    def answers(self) -> bool:
        with urllib.request.urlopen(f"{self.url}/moto-api/", timeout=2):
            return True
