"""`prodg webhook`: a forge's push webhook (GitHub, Gitea/Forgejo, GitLab) or a hook's POST, received, verified, and
turned into an immediate evaluation of the git sensor (gitops.push).

- With a secret (PRODG_WEBHOOK_SECRET), a request must carry `X-Hub-Signature-256: sha256=<HMAC-SHA256 of the body>`
  (GitHub, Gitea, Forgejo), `X-Gitea-Signature: <hex HMAC>` or `X-Gitlab-Token: <secret>`; anything else is 401.
  Without a secret the listener binds only to a loopback address (a hook on the same host). Timeouts, bounds and
  the rate limit are the shared listener's (`prodg_assets/listener.py`).
- A payload naming another branch (`"ref": "refs/heads/<other>"`) is acknowledged and ignored.
- The answer (202) does not wait for the deploy: notifications are coalesced into one evaluation at a time, and an
  evaluation that fails leaves the push to the sensor's next tick.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
from dataclasses import replace

from ..listener import Limits, Listener, Reply, Request, same_secret
from .push import PushError, deploy_now

log = logging.getLogger("prodg.webhook")
MAX_BODY = 25 * 1024 * 1024  # GitHub caps payloads at 25 MB


def signature_ok(secret: str, body: bytes, headers) -> bool:
    """Whether the request proves it knows `secret` in one of the forges' ways (compared in constant time)."""
    want = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    github = headers.get("X-Hub-Signature-256") or ""
    if github.startswith("sha256=") and same_secret(github[7:], want):
        return True
    gitea = headers.get("X-Gitea-Signature") or headers.get("X-Forgejo-Signature") or ""
    if gitea and same_secret(gitea, want):
        return True
    gitlab = headers.get("X-Gitlab-Token") or ""
    return bool(gitlab) and same_secret(gitlab, secret)


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


def serve(host: str, port: int, secret: str, branch: str, dagster_url: str, location: str = "prodg",
          limits: Limits = Limits()) -> None:
    """Listen until interrupted, behind prodg's one hardened listener (`listener.Listener`: timeouts, worker and
    per-client bounds, rate limit, Content-Length rules); bodies up to MAX_BODY."""
    evaluator = Evaluator(dagster_url, location)

    def handle(request: Request) -> Reply:
        if secret and not signature_ok(secret, request.body, request.headers):
            return Reply(401, "signature missing or wrong")
        other = other_branch(request.body, branch)
        if other:
            return Reply(202, f"ignored: a push to {other}, not {branch}")
        evaluator.notify()
        return Reply(202, "the git sensor evaluates now")

    listener = Listener(host, port, handle, name="prodg webhook", limits=replace(limits, max_body=MAX_BODY),
                        authenticated=bool(secret), auth_setting="PRODG_WEBHOOK_SECRET")
    log.info("prodg webhook on http://%s:%d/ for branch %s -> %s", host, listener.port, branch, dagster_url)
    listener.serve_forever()
