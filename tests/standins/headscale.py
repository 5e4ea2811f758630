"""Headscale's REST API (0.23), as much as prodg uses: /health, GET /api/v1/node, and the policy of
`policy.mode: database` — GET and PUT /api/v1/policy ({"policy": "<HuJSON text>"}) — with a bearer API key. A PUT
whose text is not HuJSON is refused as Headscale refuses it; in `file` mode a PUT is refused, as there."""

import json
import re

from tests.standins.http import JsonStandIn


def hujson_value(text: str):
    """The JSON value of a HuJSON text whose comments are whole `//` lines (what prodg and an operator write)."""
    plain = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("//"))
    return json.loads(re.sub(r",(\s*[\]}])", r"\1", plain))


class HeadscaleStandIn(JsonStandIn):
    def __init__(self, api_key: str, nodes: list[dict], mode: str = "database"):
        super().__init__()
        self.api_key, self.nodes, self.mode = api_key, nodes, mode
        self.policy = ""  # the stored text, "" before any
        self.updated_at = None

    def route(self, method, path, query, body, headers):
        if method == "GET" and path == "/health":
            return 200, {"status": "pass"}
        if headers.get("Authorization") != f"Bearer {self.api_key}":
            return 401, {"code": 16, "message": "Unauthorized", "details": []}
        if method == "GET" and path == "/api/v1/node":
            return 200, {"nodes": self.nodes}
        if method == "GET" and path == "/api/v1/policy":
            if not self.policy:
                return 404, {"code": 5, "message": "acl policy not found", "details": []}
            return 200, {"policy": self.policy, "updatedAt": self.updated_at}
        if method == "PUT" and path == "/api/v1/policy":
            if self.mode != "database":
                return 500, {"code": 2, "message": "update is disabled for modes other than 'database'",
                             "details": []}
            text = (body or {}).get("policy", "")
            try:
                value = hujson_value(text)
            except ValueError as exc:
                return 500, {"code": 2, "message": f"loading ACL policy: parsing hujson: {exc}", "details": []}
            if not isinstance(value, dict) or not isinstance(value.get("acls", []), list):
                return 500, {"code": 2, "message": "loading ACL policy: not an ACL policy", "details": []}
            self.policy, self.updated_at = text, "2026-12-05T00:00:00Z"
            return 200, {"policy": text, "updatedAt": self.updated_at}
        return 404, {"code": 5, "message": "Not Found", "details": []}
