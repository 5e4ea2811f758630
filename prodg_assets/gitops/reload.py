"""The graph follows the branch: when a new head changes what the definitions are drawn from (the set of services,
their layers and dependencies, or any prodg.yaml setting), the code location asks Dagster's webserver to reload it
(GraphQL `reloadRepositoryLocation`), so the next sensor tick runs in a process whose graph, checks, schedules and
resources are the head's. Works where the code server can reload in place: `dagster dev`, and the production
deployment's `dagster code-server start`; the daemon follows the new server within about a second.

The request is sent from a thread of its own (a reload takes longer than a sensor tick may), at most one at a time
per process and not again within `MIN_GAP_S`: the process that answers a successful reload is a new one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from dataclasses import asdict

from ..desired import DesiredState

MIN_GAP_S = 120.0
MUTATION = """mutation Reload($name: String!) { reloadRepositoryLocation(repositoryLocationName: $name) {
  __typename
  ... on WorkspaceLocationEntry { locationOrLoadError { __typename ... on PythonError { message } } }
  ... on ReloadNotSupported { message } ... on RepositoryLocationNotFound { message }
  ... on UnauthorizedError { message } ... on PythonError { message } } }"""

_lock = threading.Lock()
_inflight = False
_last_request = -MIN_GAP_S
log = logging.getLogger("prodg.reload")


def graph_fingerprint(state: DesiredState) -> str:
    """A hash of what `build_defs` draws from the desired state: each service's asset, group, dependencies and
    kind of check, and every prodg.yaml setting. A change to anything else (an env value, a port, a config file)
    is applied by the assets at run time and needs no reload."""
    services = sorted((s.asset, s.layer, state.upstream(s.name), bool(s.secrets_used), s.build is not None)
                      for s in state.services.values())
    body = {"services": services, "settings": asdict(state.settings)}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]


def request_reload(dagster_url: str, location: str) -> str:
    """Ask the webserver at `dagster_url` to reload the code location `location`; returns what was done."""
    global _inflight, _last_request
    with _lock:
        if _inflight:
            return "a reload is already under way"
        if time.monotonic() - _last_request < MIN_GAP_S:
            return f"a reload was requested less than {MIN_GAP_S:.0f}s ago"
        _inflight, _last_request = True, time.monotonic()
    threading.Thread(target=_post, args=(dagster_url, location), name="prodg-reload", daemon=True).start()
    return f"reload of code location {location!r} requested from {dagster_url}"


def _post(dagster_url: str, location: str) -> None:
    global _inflight
    import requests  # imported on first use: loading the code location does not pay for it

    try:
        resp = requests.post(f"{dagster_url.rstrip('/')}/graphql", timeout=600,
                             json={"query": MUTATION, "variables": {"name": location}})
        log.info("reload of %s: HTTP %s %s", location, resp.status_code, resp.text[:300])
    except Exception as exc:  # the next tick asks again once MIN_GAP_S has passed
        log.warning("reload of %s could not be requested: %r", location, exc)
    finally:
        with _lock:
            _inflight = False
