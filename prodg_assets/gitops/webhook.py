"""`prodg webhook`: a forge's push webhook (GitHub, Gitea/Forgejo, GitLab) or a hook's POST, received, verified, and
turned into an immediate evaluation of the git sensor (gitops.push).

- With a secret (PRODG_WEBHOOK_SECRET), a request must carry `X-Hub-Signature-256: sha256=<HMAC-SHA256 of the body>`
  (GitHub, Gitea, Forgejo), `X-Gitea-Signature: <hex HMAC>` or `X-Gitlab-Token: <secret>`; anything else is 401.
  Without a secret the listener binds only to a loopback address (a hook on the same host). Timeouts, bounds and
  the rate limit are the shared listener's (`prodg_assets/listener.py`).
- A payload naming another branch (`"ref": "refs/heads/<other>"`) is acknowledged and ignored.
- Path `/infisical`: Infisical's project webhook, signed with PRODG_INFISICAL_WEBHOOK_SECRET
  (`x-infisical-signature: t=<unix ms>;<hex HMAC-SHA256 of the body>`, the time within INFISICAL_SKEW_S of ours);
  its events `secrets.modified` and `secret.modified` (both names Infisical has used) have the secret-rotation
  sensor evaluated at once (watch.drift), `test` is acknowledged. Without that secret the path answers 404.
- The answer (202) does not wait for the deploy: notifications are coalesced into one evaluation at a time, and an
  evaluation that fails leaves the push to the sensor's next tick.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
from dataclasses import replace

from ..contract import ROTATION_SENSOR
from ..listener import Limits, Listener, Reply, Request, same_secret
from .push import PushError, deploy_now

log = logging.getLogger("prodg.webhook")
MAX_BODY = 25 * 1024 * 1024  # GitHub caps payloads at 25 MB
INFISICAL_PATH = "/infisical"
INFISICAL_SKEW_S = 300  # a signed Infisical request older (or newer) than this is a replay, refused
INFISICAL_EVENTS = ("secrets.modified", "secret.modified")


def infisical_signature_ok(secret: str, body: bytes, header: str, now: float) -> bool:
    """`x-infisical-signature: t=<ms>;<hex>` proves `secret` over the body (constant time) at a time near `now`."""
    stamp, _, signature = header.partition(";")
    if not stamp.startswith("t=") or not stamp[2:].isdigit() or not signature:
        return False
    if abs(int(stamp[2:]) / 1000 - now) > INFISICAL_SKEW_S:
        return False
    return same_secret(signature, hmac.new(secret.encode(), body, hashlib.sha256).hexdigest())


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

    def __init__(self, dagster_url: str, location: str, sensor: str = "", trigger: str = "push"):
        self.dagster_url, self.location, self.trigger = dagster_url, location, trigger
        self.sensor = sensor
        self._wanted = threading.Event()
        threading.Thread(target=self._loop, name=f"prodg-{trigger}", daemon=True).start()

    def notify(self) -> None:
        self._wanted.set()

    def _loop(self) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            try:
                extra = {"sensor": self.sensor} if self.sensor else {}
                log.info("%s: %s", self.trigger, deploy_now(self.dagster_url, self.location, trigger=self.trigger,
                                                            **extra))
            except PushError as exc:
                log.warning("%s: %s; the sensor's next tick deploys it", self.trigger, exc)


def serve(host: str, port: int, secret: str, branch: str, dagster_url: str, location: str = "prodg",
          limits: Limits = Limits(), infisical_secret: str = "") -> None:
    """Listen until interrupted, behind prodg's one hardened listener (`listener.Listener`: timeouts, worker and
    per-client bounds, rate limit, Content-Length rules); bodies up to MAX_BODY."""
    evaluator = Evaluator(dagster_url, location)
    rotation = Evaluator(dagster_url, location, sensor=ROTATION_SENSOR, trigger="infisical") \
        if infisical_secret else None

    def infisical(request: Request) -> Reply:
        if rotation is None:
            return Reply(404, "no Infisical webhook here (PRODG_INFISICAL_WEBHOOK_SECRET is not set)")
        if not infisical_signature_ok(infisical_secret, request.body,
                                      request.headers.get("x-infisical-signature") or "", time.time()):
            return Reply(401, "signature missing, wrong or stale")
        try:
            event = str(json.loads(request.body or b"{}").get("event") or "")
        except (ValueError, AttributeError):
            return Reply(400, "not a JSON object")
        if event == "test":
            return Reply(202, "test event received")
        if event not in INFISICAL_EVENTS:
            return Reply(202, f"ignored: event {event[:40]!r}")
        rotation.notify()
        return Reply(202, "the secret-rotation sensor evaluates now")

    def handle(request: Request) -> Reply:
        if request.path.rstrip("/") == INFISICAL_PATH:
            return infisical(request)
        if secret and not signature_ok(secret, request.body, request.headers):
            return Reply(401, "signature missing or wrong")
        other = other_branch(request.body, branch)
        if other:
            return Reply(202, f"ignored: a push to {other}, not {branch}")
        evaluator.notify()
        return Reply(202, "the git sensor evaluates now")

    listener = Listener(host, port, handle, name="prodg webhook", limits=replace(limits, max_body=MAX_BODY),
                        authenticated=bool(secret),
                        auth_setting="PRODG_WEBHOOK_SECRET")
    log.info("prodg webhook on http://%s:%d/ for branch %s -> %s", host, listener.port, branch, dagster_url)
    listener.serve_forever()
