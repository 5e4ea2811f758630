"""Every HTTP endpoint prodg serves stands behind this one listener (the push webhook; any metrics or webhook endpoint
added later), so each gets the same defences without writing them again:

- loopback unless the endpoint authenticates its callers (binding another address without that is refused);
- the whole request, headers and body, within `timeout_s`, else the connection is cut: a client sending its headers a
  byte a minute holds a worker for seconds, not for ever;
- at most `workers` requests at once and `per_client` from one address (503 beyond, before a byte is read), and
  `rate_per_minute` requests per address (a token bucket with a burst of a quarter of that; 429 before a byte is read);
- a body only with one `Content-Length`, numeric, non-negative and at most `max_body` (411, 400, 413, without reading
  further); chunked bodies are refused (411); a body shorter than announced is 400;
- nothing of a header, a query string or a body in the log: address, method, path and status only.
Signatures and tokens are the endpoint's to check, in constant time (`same_secret`). Limits:
`settings.LISTENER_SETTINGS`.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import re
import socket
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Optional
from urllib.parse import urlsplit

log = logging.getLogger("prodg.listener")
LENGTH = re.compile(r"[0-9]{1,18}")  # a Content-Length as RFC 9110 writes it: digits only (no sign, no spaces inside)


@dataclass(frozen=True)
class Limits:
    max_body: int = 1 << 20
    timeout_s: float = 10.0
    workers: int = 16
    per_client: int = 4
    rate_per_minute: int = 120


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # without the query string
    query: str
    headers: Message
    body: bytes
    client: str  # the peer's address


@dataclass(frozen=True)
class Reply:
    status: int
    text: str = ""
    body: Optional[bytes] = None  # instead of `text`
    content_type: str = "text/plain; charset=utf-8"


def same_secret(given: str | bytes, expected: str | bytes) -> bool:
    """Whether a presented token or signature equals the expected one, compared in constant time."""
    as_bytes = [v.encode() if isinstance(v, str) else v for v in (given, expected)]
    return hmac.compare_digest(as_bytes[0], as_bytes[1])


class RateLimit:
    """A token bucket per client address: `per_minute` requests a minute, a burst of a quarter of that (at least 1).
    At most `max_clients` addresses are remembered (the least recently seen is forgotten first)."""

    def __init__(self, per_minute: int, max_clients: int = 10_000):
        self.rate, self.burst, self.max_clients = per_minute / 60.0, max(1.0, per_minute / 4), max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def allow(self, client: str, now: Optional[float] = None) -> bool:
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, at = self._buckets.pop(client, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate)
            allowed = tokens >= 1.0
            self._buckets[client] = (tokens - 1.0 if allowed else tokens, now)
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
            return allowed


REASONS = {429: "Too Many Requests", 503: "Service Unavailable"}


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, handle: Callable[[Request], Reply], limits: Limits, methods: tuple[str, ...],
                 name: str):
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.address_family = family
        self.handle, self.limits, self.methods, self.name = handle, limits, methods, name
        self.rate = RateLimit(limits.rate_per_minute)
        self._busy, self._per_client, self._lock = 0, {}, threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request, client_address):
        client = client_address[0]
        refused = 0
        with self._lock:
            if not self.rate.allow(client):
                refused = 429
            elif self._busy >= self.limits.workers or self._per_client.get(client, 0) >= self.limits.per_client:
                refused = 503
            else:
                self._busy += 1
                self._per_client[client] = self._per_client.get(client, 0) + 1
        if refused:
            self._refuse(request, client, refused)
            return
        try:
            super().process_request(request, client_address)
        except Exception:  # no thread could be started: give the slot back
            self._release(client)
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release(client_address[0])

    def _release(self, client: str) -> None:
        with self._lock:
            self._busy -= 1
            left = self._per_client.get(client, 1) - 1
            if left > 0:
                self._per_client[client] = left
            else:
                self._per_client.pop(client, None)

    def _refuse(self, request: socket.socket, client: str, status: int) -> None:
        """Answer `status` without reading the request, and close (in the accepting thread: never blocks long)."""
        try:
            request.settimeout(0.5)
            request.sendall(f"HTTP/1.0 {status} {REASONS[status]}\r\nContent-Length: 0\r\nConnection: close\r\n"
                            f"Retry-After: 1\r\n\r\n".encode())
        except OSError:
            pass
        finally:
            self.shutdown_request(request)
        log.info("%s %s: refused before reading (%d)", self.name, client, status)

    def handle_error(self, request, client_address):  # never a traceback with a request's content in it
        log.warning("%s %s: %s", self.name, client_address[0], sys.exc_info()[0].__name__)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"  # one request per connection: a connection's time is its request's
    server_version = "prodg"
    sys_version = ""

    def setup(self):
        self.timeout = self.server.limits.timeout_s  # each read; the timer below bounds the whole request
        super().setup()
        self._deadline = threading.Timer(self.server.limits.timeout_s, self._cut)
        self._deadline.daemon = True
        self._deadline.start()

    def finish(self):
        self._deadline.cancel()
        super().finish()

    def _cut(self) -> None:
        """The request took longer than allowed: what is still to be read ends here (a blocked read returns)."""
        try:
            self.connection.shutdown(socket.SHUT_RD)
        except OSError:
            pass

    def do_GET(self):  # noqa: N802 (http.server's names)
        self._serve()

    def do_POST(self):  # noqa: N802
        self._serve()

    def do_HEAD(self):  # noqa: N802
        self._serve()

    def _serve(self) -> None:
        body, refused = self._read_body()
        self._deadline.cancel()  # the request is in: what the endpoint does with it is not the client's time
        if refused:
            return self._send(refused)
        if self.command not in self.server.methods:
            return self._send(Reply(405, f"{self.command} is not served here"))
        parts = urlsplit(self.path)
        request = Request(self.command, parts.path, parts.query, self.headers, body, self.client_address[0])
        try:
            reply = self.server.handle(request)
        except Exception as exc:  # noqa: BLE001 (the endpoint's failure is a 500, never a traceback to the client)
            log.warning("%s %s %s: the endpoint failed (%s)", self.server.name, request.client, request.path,
                        type(exc).__name__)
            reply = Reply(500, "internal error")
        self._send(reply)

    def _read_body(self) -> tuple[bytes, Optional[Reply]]:
        lengths = self.headers.get_all("Content-Length") or []
        if self.headers.get("Transfer-Encoding"):
            return b"", Reply(411, "send the body with a Content-Length (chunked bodies are not accepted)")
        if not lengths:
            if self.command == "POST":
                return b"", Reply(411, "a Content-Length is required")
            return b"", None
        if len(lengths) > 1 or not LENGTH.fullmatch(lengths[0].strip()):
            return b"", Reply(400, "Content-Length must be one non-negative whole number")
        length = int(lengths[0])
        if length > self.server.limits.max_body:
            return b"", Reply(413, f"the body may be at most {self.server.limits.max_body} bytes")
        body = self.rfile.read(length) if length else b""
        if len(body) < length:
            return b"", Reply(400, "the body is shorter than its Content-Length")
        return body, None

    def _send(self, reply: Reply) -> None:
        data = reply.body if reply.body is not None else (reply.text + "\n").encode()
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
        except OSError:  # the client is gone
            self.close_connection = True

    def log_request(self, code="-", size="-"):  # address, method, path, status: no query string, header or body
        path = urlsplit(self.path).path if isinstance(self.path, str) else ""
        log.info("%s %s %s %s %s", self.server.name, self.client_address[0], self.command, path[:200].encode(
            "unicode_escape").decode(), code)

    def log_error(self, format, *args):  # noqa: A002 (http.server's name); its messages quote the request line
        log.info("%s %s: malformed or timed-out request", self.server.name, self.client_address[0])


class Listener:
    """An HTTP endpoint on `host:port` (port 0: one the kernel picks) answering with `handle`. `authenticated`
    says the endpoint checks who is asking; without it, only a loopback address may be bound (the setting that
    would authenticate is named in the refusal: `auth_setting`)."""

    def __init__(self, host: str, port: int, handle: Callable[[Request], Reply], *, name: str, limits: Limits,
                 authenticated: bool, auth_setting: str, methods: tuple[str, ...] = ("POST",)):
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            raise ValueError(f"{name}: listen address must be an IP address, got {host!r}") from None
        if not authenticated and not loopback:
            raise ValueError(f"listening on {host} needs {auth_setting}: without it, bind a loopback address")
        self.name = name
        self._server = _Server((host, port), handle, limits, methods, name)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def serve_forever(self) -> None:
        try:
            self._server.serve_forever()
        finally:
            self._server.server_close()

    def shutdown(self) -> None:
        self._server.shutdown()
