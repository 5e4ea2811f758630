"""A local stand-in for Telegram's Bot API (sendMessage), speaking its wire protocol: POST /bot<token>/sendMessage
with a JSON or form body, answered with {"ok": true, "result": Message} or {"ok": false, "error_code": ...}."""

import time

from tests.standins.http import JsonStandIn


class TelegramStandIn(JsonStandIn):
    def __init__(self, token: str):
        super().__init__()
        self.token = token
        self.messages: list[dict] = []
        self.requests: list[str] = []
        self.delay_s = 0.0
        self.status = 200

    def route(self, method, path, query, body, headers):
        self.requests.append(path)
        time.sleep(self.delay_s)
        if method != "POST" or path != f"/bot{self.token}/sendMessage":
            return (401 if path.endswith("/sendMessage") else 404), {"ok": False, "error_code": 401,
                                                                      "description": "Unauthorized"}
        if self.status != 200:
            return self.status, {"ok": False, "error_code": self.status, "description": "Internal Server Error"}
        data = body or {}
        if not data.get("chat_id") or not data.get("text"):
            return 400, {"ok": False, "error_code": 400, "description": "Bad Request: message text is empty"}
        self.messages.append(data)
        chat = data["chat_id"]
        return 200, {"ok": True, "result": {
            "message_id": len(self.messages), "date": int(time.time()),
            "chat": {"id": int(chat) if str(chat).lstrip("-").isdigit() else chat, "type": "group"},
            "text": data["text"]}}
