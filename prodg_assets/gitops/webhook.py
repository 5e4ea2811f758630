"""`prodg webhook`: a forge's push webhook (GitHub, Gitea/Forgejo, GitLab) or a hook's POST, received, verified, and
turned into an immediate evaluation of the git sensor (gitops.push).

- With a secret (PRODG_WEBHOOK_SECRET), a request must carry `X-Hub-Signature-256: sha256=<HMAC-SHA256 of the body>`
  (GitHub, Gitea, Forgejo), `X-Gitea-Signature: <hex HMAC>` or `X-Gitlab-Token: <secret>`; anything else is 401.
  Without a secret the listener binds only to a loopback address (a hook on the same host).
- A payload naming another branch (`"ref": "refs/heads/<other>"`) is acknowledged and ignored.
- The answer (202) does not wait for the deploy: notifications are coalesced into one evaluation at a time, and an
  evaluation that fails leaves the push to the sensor's next tick.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .push import PushError, deploy_now

log = logging.getLogger("prodg.webhook")
MAX_BODY = 25 * 1024 * 1024  # GitHub caps payloads at 25 MB


def signature_ok(secret: str, body: bytes, headers) -> bool:
    """Whether the request proves it knows `secret` in one of the forges' ways."""
    want = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    github = headers.get("X-Hub-Signature-256") or ""
    if github.startswith("sha256=") and hmac.compare_digest(github[7:], want):
        return True
    gitea = headers.get("X-Gitea-Signature") or headers.get("X-Forgejo-Signature") or ""
    if gitea and hmac.compare_digest(gitea, want):
        return True
    gitlab = headers.get("X-Gitlab-Token") or ""
    return bool(gitlab) and hmac.compare_digest(gitlab.encode(), secret.encode())


def other_branch(body: bytes, branch: str) -> str:
    """The branch a push payload names when it is not `branch` ("" when it names `branch` or nothing)."""
    try:
        ref = json.loads(body or b"{}").get("ref") or ""
    except (ValueError, AttributeError):
        return ""
    if ref.startswith("refs/heads/") and ref != f"refs/heads/{branch}":
        return ref[len("refs/heads/"):]
    return ""


class Evaluator:
    """One evaluation of the sensor at a time; notifications that arrive meanwhile make one more afterwards."""

    def __init__(self, dagster_url: str, location: str):
        self.dagster_url, self.location = dagster_url, location
        self._wanted = threading.Event()
        threading.Thread(target=self._loop, name="prodg-push", daemon=True).start()

    def notify(self) -> None:
        self._wanted.set()

    def _loop(self) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            try:
                log.info("push: %s", deploy_now(self.dagster_url, self.location))
            except PushError as exc:
                log.warning("push: %s; the sensor's next tick deploys it", exc)


def serve(host: str, port: int, secret: str, branch: str, dagster_url: str, location: str = "prodg") -> None:
    """Listen until interrupted."""
    if not secret and not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"listening on {host} needs PRODG_WEBHOOK_SECRET: without one, bind a loopback address")
    evaluator = Evaluator(dagster_url, location)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                return self._reply(413, "payload too large")
            body = self.rfile.read(length)
            if secret and not signature_ok(secret, body, self.headers):
                return self._reply(401, "signature missing or wrong")
            other = other_branch(body, branch)
            if other:
                return self._reply(202, f"ignored: a push to {other}, not {branch}")
            evaluator.notify()
            return self._reply(202, "the git sensor evaluates now")

        def _reply(self, status: int, text: str) -> None:
            data = (text + "\n").encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, fmt, *args):  # the request line, never a header or the body
            log.info("%s %s", self.address_string(), fmt % args)

    server = ThreadingHTTPServer((host, port), Handler)
    log.info("prodg webhook on http://%s:%d/ for branch %s -> %s", host, server.server_port, branch, dagster_url)
    try:
        server.serve_forever()
    finally:
        server.server_close()
