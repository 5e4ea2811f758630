"""Hermes API — minimal stand-in with Hermes' contract (/health, /metrics, bearer token), not the real orchestrator.

ProDG's real Hermes API (agent orchestration over the T1/T2/T3 trust tiers) is its own application; this stand-in
keeps only the contract the Mainframe relies on, so the image builds and runs offline from Debian bookworm's
packages (fastapi 0.92, uvicorn 0.17, prometheus_client 0.16):

- GET /health     -> {"status": "ok"}, no auth (Compose healthcheck)
- GET /metrics    -> Prometheus text exposition, no auth (scraped as hermes-api:8000 on the internal network)
- GET /v1/status  -> requires `Authorization: Bearer <HERMES_API_TOKEN>`; 401 if missing or wrong, 503 while no
                     token is configured (an empty HERMES_API_TOKEN never means "open").

The token is read from the environment once, at startup, and is never logged or echoed.
"""

import hmac
import logging
import os
from typing import Optional

from fastapi import Depends, FastAPI, Header, HTTPException, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest

log = logging.getLogger("hermes-api")

TIERS = ["T1", "T2", "T3"]
_KNOWN_PATHS = {"/health", "/metrics", "/v1/status"}  # bounds the `path` label's cardinality

REQUESTS = Counter(
    "hermes_api_requests_total",
    "HTTP requests handled by the Hermes API, by method, path and status code.",
    ["method", "path", "status"],
)


def create_app(token: Optional[str] = None) -> FastAPI:
    """Build the app; `token` defaults to $HERMES_API_TOKEN, read here (at startup), not per request."""
    if token is None:
        token = os.environ.get("HERMES_API_TOKEN", "")
    expected = token.encode("utf-8") if token else b""
    if not expected:
        log.warning("HERMES_API_TOKEN is not set: every authenticated endpoint answers 503")

    app = FastAPI(title="Hermes API (stand-in)", docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def count_requests(request: Request, call_next):
        path = request.url.path if request.url.path in _KNOWN_PATHS else "other"
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            REQUESTS.labels(request.method, path, str(status)).inc()

    def require_token(authorization: Optional[str] = Header(default=None)) -> None:
        if not expected:
            raise HTTPException(status_code=503, detail="API token not configured")
        scheme, _, presented = (authorization or "").partition(" ")
        presented = presented.strip()
        if scheme.lower() != "bearer" or not presented or not hmac.compare_digest(
            presented.encode("utf-8"), expected
        ):
            raise HTTPException(
                status_code=401, detail="invalid or missing bearer token", headers={"WWW-Authenticate": "Bearer"}
            )

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(content=generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/status", dependencies=[Depends(require_token)])
    def status() -> dict:
        return {"service": "hermes-api", "tiers": TIERS}

    return app


app = create_app()
