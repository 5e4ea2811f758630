"""Cloudflare's v4 DNS API, as much as prodg uses: zones by name, DNS records list/create/patch, bearer auth,
the {success, errors, messages, result, result_info} envelope."""

import uuid

from tests.standins.http import JsonStandIn


class CloudflareStandIn(JsonStandIn):
    def __init__(self, token: str, zone: str, records: list[dict]):
        super().__init__()
        self.token, self.zone, self.zone_id = token, zone, uuid.uuid4().hex
        self.records = [{"id": uuid.uuid4().hex, "ttl": 1, "proxied": False, **r} for r in records]

    @staticmethod
    def ok(result, info=None):
        return 200, {"success": True, "errors": [], "messages": [], "result": result,
                     **({"result_info": info} if info else {})}

    def route(self, method, path, query, body, headers):
        if headers.get("Authorization") != f"Bearer {self.token}":
            return 403, {"success": False, "errors": [{"code": 10000, "message": "Authentication error"}],
                         "messages": [], "result": None}
        if method == "GET" and path == "/zones":
            zones = [{"id": self.zone_id, "name": self.zone}] if query.get("name") in (None, self.zone) else []
            return self.ok(zones, {"page": 1, "per_page": 20, "count": len(zones), "total_count": len(zones),
                                   "total_pages": 1})
        prefix = f"/zones/{self.zone_id}/dns_records"
        if method == "GET" and path == prefix:
            per, page = int(query.get("per_page", 100)), int(query.get("page", 1))
            chunk = self.records[(page - 1) * per: page * per]
            pages = max(1, -(-len(self.records) // per))
            return self.ok(chunk, {"page": page, "per_page": per, "count": len(chunk),
                                   "total_count": len(self.records), "total_pages": pages})
        if method == "POST" and path == prefix:
            rec = {"id": uuid.uuid4().hex, "ttl": body.get("ttl", 1), "proxied": bool(body.get("proxied")),
                   "type": body["type"], "name": body["name"], "content": body["content"]}
            self.records.append(rec)
            return self.ok(rec)
        if method == "PATCH" and path.startswith(prefix + "/"):
            rec = next((r for r in self.records if r["id"] == path.rsplit("/", 1)[1]), None)
            if rec is None:
                return 404, {"success": False, "errors": [{"code": 81044, "message": "Record not found"}],
                             "messages": [], "result": None}
            rec.update({k: v for k, v in body.items() if k in ("content", "proxied", "ttl")})
            return self.ok(rec)
        return 404, {"success": False, "errors": [{"code": 7003, "message": "No route for that URI"}],
                     "messages": [], "result": None}
