"""Headscale's REST API (0.23), as much as prodg uses: /health and GET /api/v1/node with a bearer API key."""

from tests.standins.http import JsonStandIn


class HeadscaleStandIn(JsonStandIn):
    def __init__(self, api_key: str, nodes: list[dict]):
        super().__init__()
        self.api_key, self.nodes = api_key, nodes

    def route(self, method, path, query, body, headers):
        if method == "GET" and path == "/health":
            return 200, {"status": "pass"}
        if headers.get("Authorization") != f"Bearer {self.api_key}":
            return 401, {"code": 16, "message": "Unauthorized", "details": []}
        if method == "GET" and path == "/api/v1/node":
            return 200, {"nodes": self.nodes}
        return 404, {"code": 5, "message": "Not Found", "details": []}
