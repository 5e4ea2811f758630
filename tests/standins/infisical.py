"""Infisical's API as much as prodg uses it, speaking its real wire protocol (what the `infisicalsdk` client sends and
parses): a machine identity's universal-auth login (POST /api/v1/auth/universal-auth/login), the raw secrets of one
project, environment and folder (GET /api/v3/secrets/raw, GET/POST/PATCH /api/v3/secrets/raw/{name}) with the
bearer token the login gave, and the signed webhook a project sends when a secret changes
(`x-infisical-signature: t=<ms>;<hex HMAC-SHA256 of the JSON body>`)."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets as random
import time
import urllib.request

from tests.standins.http import JsonStandIn

NOT_AUTHORISED = {"statusCode": 401, "message": "Token missing or invalid", "error": "UnauthorizedError"}


class InfisicalStandIn(JsonStandIn):
    def __init__(self, client_id: str, client_secret: str, project_id: str, environment: str = "prod",
                 secret_path: str = "/"):
        super().__init__()
        self.client_id, self.client_secret = client_id, client_secret
        self.project_id, self.environment, self.secret_path = project_id, environment, secret_path
        self.tokens: set[str] = set()
        self.secrets: dict[str, str] = {}
        self.versions: dict[str, int] = {}
        self.logins = 0

    def set(self, name: str, value: str) -> None:
        """A value changed in Infisical's UI."""
        self.secrets[name] = value
        self.versions[name] = self.versions.get(name, 0) + 1

    def _secret(self, name: str) -> dict:
        now = "2026-12-05T00:00:00.000Z"
        return {"id": f"id-{name}", "_id": f"id-{name}", "workspace": self.project_id, "environment": self.environment,
                "version": self.versions.get(name, 1), "type": "shared", "secretKey": name,
                "secretValue": self.secrets[name], "secretComment": "", "createdAt": now, "updatedAt": now,
                "secretPath": self.secret_path, "tags": []}

    def _scope_ok(self, query: dict, body: dict | None) -> bool:
        got = {**query, **(body or {})}
        return (got.get("workspaceId") == self.project_id and got.get("environment") == self.environment
                and got.get("secretPath", "/") == self.secret_path)

    def route(self, method, path, query, body, headers):
        if method == "POST" and path == "/api/v1/auth/universal-auth/login":
            body = body or {}
            if body.get("clientId") != self.client_id or body.get("clientSecret") != self.client_secret:
                return 401, {"statusCode": 401, "message": "Invalid credentials", "error": "UnauthorizedError"}
            token = random.token_hex(16)
            self.tokens.add(token)
            self.logins += 1
            return 200, {"accessToken": token, "expiresIn": 7200, "accessTokenMaxTTL": 43200, "tokenType": "Bearer"}
        auth = headers.get("Authorization") or ""
        if not auth.startswith("Bearer ") or auth[7:] not in self.tokens:
            return 401, NOT_AUTHORISED
        if not path.startswith("/api/v3/secrets/raw"):
            return 404, {"statusCode": 404, "message": "Route not found", "error": "NotFound"}
        if not self._scope_ok(query, body):
            return 404, {"statusCode": 404, "message": "Folder or environment not found", "error": "NotFound"}
        name = path[len("/api/v3/secrets/raw/"):] if path.startswith("/api/v3/secrets/raw/") else ""
        if method == "GET" and not name:
            return 200, {"secrets": [self._secret(n) for n in sorted(self.secrets)], "imports": []}
        if method == "GET":
            if name not in self.secrets:
                return 404, {"statusCode": 404, "message": f"Secret with name '{name}' not found", "error": "NotFound"}
            return 200, {"secret": self._secret(name)}
        if method == "POST":
            if name in self.secrets:
                return 400, {"statusCode": 400, "message": "Secret already exist", "error": "BadRequest"}
            self.set(name, str(body.get("secretValue", "")))
            return 200, {"secret": self._secret(name)}
        if method == "PATCH":
            if name not in self.secrets:
                return 404, {"statusCode": 404, "message": f"Secret with name '{name}' not found", "error": "NotFound"}
            self.set(name, str(body.get("secretValue", "")))
            return 200, {"secret": self._secret(name)}
        return 405, {"statusCode": 405, "message": "Method not allowed", "error": "MethodNotAllowed"}

    def send_webhook(self, url: str, key: str, event: str = "secrets.modified", when_ms: int | None = None,
                     body_edit=None) -> int:
        """Infisical's webhook for this project: the payload as its server builds it, signed with `key` as it signs;
        `body_edit(bytes) -> bytes` tampers with the body after signing. Returns the HTTP status."""
        payload = {"event": event, "project": {"workspaceId": self.project_id, "projectId": self.project_id,
                                               "projectName": "prodg-mainframe", "environment": self.environment,
                                               "secretPath": self.secret_path},
                   "timestamp": when_ms if when_ms is not None else int(time.time() * 1000)}
        raw = json.dumps(payload, separators=(",", ":")).encode()  # JSON.stringify
        signature = hmac.new(key.encode(), raw, hashlib.sha256).hexdigest()
        raw = body_edit(raw) if body_edit else raw
        request = urllib.request.Request(url, data=raw, method="POST", headers={
            "Content-Type": "application/json", "x-infisical-signature": f"t={payload['timestamp']};{signature}"})
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code
