"""A local stand-in for Telegram's Bot API (sendMessage), speaking its wire protocol: POST /bot<token>/sendMessage
with a JSON or form body, answered with {"ok": true, "result": Message} or {"ok": false, "error_code": ...}."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs


class TelegramStandIn:
    def __init__(self, token: str):
        self.token = token
        self.messages: list[dict] = []
        self.requests: list[str] = []
        self.delay_s = 0.0
        self.status = 200
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                stand_in.requests.append(self.path)
                time.sleep(stand_in.delay_s)
                if self.path != f"/bot{stand_in.token}/sendMessage":
                    return self._reply(401 if self.path.endswith("/sendMessage") else 404,
                                       {"ok": False, "error_code": 401, "description": "Unauthorized"})
                if stand_in.status != 200:
                    return self._reply(stand_in.status, {"ok": False, "error_code": stand_in.status,
                                                         "description": "Internal Server Error"})
                if "json" in (self.headers.get("Content-Type") or ""):
                    data = json.loads(body or b"{}")
                else:
                    data = {k: v[0] for k, v in parse_qs(body.decode()).items()}
                if not data.get("chat_id") or not data.get("text"):
                    return self._reply(400, {"ok": False, "error_code": 400,
                                             "description": "Bad Request: message text is empty"})
                stand_in.messages.append(data)
                self._reply(200, {"ok": True, "result": {
                    "message_id": len(stand_in.messages), "date": int(time.time()),
                    "chat": {"id": int(data["chat_id"]) if str(data["chat_id"]).lstrip("-").isdigit()
                             else data["chat_id"], "type": "group"},
                    "text": data["text"]}})

            def _reply(self, status: int, payload: dict):
                raw = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
