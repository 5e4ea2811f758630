"""A fault-injecting HTTP proxy for an S3 endpoint (moto_server in the tests): threaded, on loopback, it forwards
every request to `upstream` and can be switched at run time to

- `passthrough()` — forward everything;
- `fail_every(n, status, code)` — answer every n-th matching request itself with an S3 XML error body (503 SlowDown,
  500 InternalError, …) instead of forwarding it; `n=1` fails every matching request;
- `delay(seconds)` — hold each matching request for the next of `seconds` (a cycle: deterministic) before forwarding;
- `stall(seconds)` — hold each matching request for `seconds` and then drop it unanswered (longer than the client's
  read timeout: the client gives up first); `passthrough()` or `stop()` releases the held requests at once;
- `drop_every(n, after=False)` — close the connection of every n-th matching request without answering: before the
  request reaches the upstream, or (`after=True`) after the upstream applied it (the answer is lost);
- `reject_header(prefix)` — answer every matching request that carries a header starting with `prefix` with 400
  InvalidArgument "Unsupported header '<name>' received for this API call." — what Backblaze B2 answered to the
  flexible-checksum headers boto3 sends by default since 1.36 (`x-amz-sdk-checksum-algorithm`; django-storages#1498
  quotes it);
- `stop()` / `start()` — stop listening entirely (connections refused; open connections are cut) / listen again on
  the same port; `stop_after(n, match)` stops as the n-th matching request (forwarded) is answered: that answer
  is the last one the client gets.

`match` is a predicate over `Request` (method, path, query): `is_upload_part`, `is_complete` and friends name the S3
operations. Every request is recorded in `requests` with what was done to it (`forwarded`, `failed`, `dropped`,
`stalled`). The upstream is never changed by the proxy itself. One correction of moto: ListMultipartUploads shows
when each upload really started (moto says 2010-11-10 for all), so age-based clean-ups are tested honestly.
"""

from __future__ import annotations

import datetime
import http.client
import itertools
import re
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Optional, Sequence
from urllib.parse import parse_qs, urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
              "expect"}
REASONS = {500: ("InternalError", "We encountered an internal error. Please try again."),
           503: ("SlowDown", "Please reduce your request rate."),
           502: ("BadGateway", "Bad gateway."),
           504: ("GatewayTimeout", "Gateway timeout.")}


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict
    headers: tuple = ()  # (lower-case name, value) pairs, in the order sent

    @property
    def operation(self) -> str:
        """The S3 operation, as far as method and query tell it (enough for the faults we inject)."""
        q, m = self.query, self.method
        if "uploadId" in q and "partNumber" in q:
            return "UploadPart"
        if "uploads" in q:
            return "CreateMultipartUpload" if m == "POST" else "ListMultipartUploads"
        if "uploadId" in q:
            return {"POST": "CompleteMultipartUpload", "DELETE": "AbortMultipartUpload"}.get(m, "ListParts")
        if "delete" in q:
            return "DeleteObjects"
        if "object-lock" in q:
            return "GetObjectLockConfiguration" if m == "GET" else "PutObjectLockConfiguration"
        if "versioning" in q:
            return "GetBucketVersioning" if m == "GET" else "PutBucketVersioning"
        if "versions" in q:
            return "ListObjectVersions"
        if m == "PUT":
            return "PutObject"  # CopyObject too (x-amz-copy-source): see `copy` in the record
        if m == "GET" and self.path.count("/") <= 1:
            return "ListObjects"
        return {"GET": "GetObject", "HEAD": "HeadObject", "DELETE": "DeleteObject"}.get(m, m)


def is_upload_part(r: Request) -> bool:
    return r.operation == "UploadPart"


def is_complete(r: Request) -> bool:
    return r.operation == "CompleteMultipartUpload"


def is_put(r: Request) -> bool:
    return r.method == "PUT"


def any_request(_r: Request) -> bool:
    return True


BUCKET_SETTINGS = {"GetObjectLockConfiguration", "GetBucketVersioning"}


def not_a_bucket_setting(r: Request) -> bool:
    """Every request but the reads of the bucket's settings (Object Lock, versioning) a backup makes once."""
    return r.operation not in BUCKET_SETTINGS


@dataclass
class Record:
    request: Request
    outcome: str  # forwarded | failed | dropped | stalled | aborted (the client went away)
    status: int = 0
    copy: bool = False
    seconds: float = 0.0


def error_body(code: str, message: str, resource: str, request_id: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
            f"<Resource>{resource}</Resource><RequestId>{request_id}</RequestId></Error>").encode()


class FaultProxy:
    """`with FaultProxy(moto.url) as proxy: proxy.url` — see the module's docstring."""

    def __init__(self, upstream: str, port: int = 0):
        parts = urlsplit(upstream)
        self.upstream_host, self.upstream_port = parts.hostname, parts.port or 80
        self.port = port
        self.requests: list[Record] = []
        self._lock = threading.Lock()
        self._mode: tuple = ("pass",)
        self._match: Callable[[Request], bool] = any_request
        self._seen = 0  # matching requests since the mode was set
        self._release = threading.Event()  # set: held (delayed/stalled) requests go on at once
        self._stop_after: Optional[tuple[int, Callable[[Request], bool]]] = None
        self._stop_seen = 0
        self._connections: set[socket.socket] = set()
        self._server: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None
        self.stopped_at: Optional[float] = None
        self._initiated: dict[bytes, bytes] = {}  # upload id → when it was created (see _true_initiated)

    # -- switches ----------------------------------------------------------------------------------------------------
    def _set(self, mode: tuple, match: Callable[[Request], bool] = any_request) -> "FaultProxy":
        with self._lock:
            self._release.set()  # whoever is held by the previous mode goes on
            self._release = threading.Event()
            self._mode, self._match, self._seen = mode, match, 0
        return self

    def passthrough(self) -> "FaultProxy":
        return self._set(("pass",))

    def fail_every(self, n: int, status: int = 503, code: str = "", message: str = "",
                   match: Callable[[Request], bool] = any_request) -> "FaultProxy":
        default_code, default_message = REASONS.get(status, ("InternalError", "Error"))
        return self._set(("fail", max(1, n), status, code or default_code, message or default_message), match)

    def delay(self, seconds: float | Sequence[float], match: Callable[[Request], bool] = any_request) \
            -> "FaultProxy":
        cycle = itertools.cycle([seconds] if isinstance(seconds, (int, float)) else list(seconds))
        return self._set(("delay", cycle), match)

    def reject_header(self, prefix: str, match: Callable[[Request], bool] = any_request) -> "FaultProxy":
        return self._set(("reject", prefix.lower()), match)

    def stall(self, seconds: float, match: Callable[[Request], bool] = any_request) -> "FaultProxy":
        return self._set(("stall", seconds), match)

    def drop_every(self, n: int, after: bool = False, match: Callable[[Request], bool] = any_request) \
            -> "FaultProxy":
        return self._set(("drop", max(1, n), after), match)

    def stop_after(self, n: int, match: Callable[[Request], bool] = any_request) -> "FaultProxy":
        """Stop listening (as `stop()`) once the n-th request matching `match` has been answered."""
        with self._lock:
            self._stop_after, self._stop_seen = (max(1, n), match), 0
        return self

    def reset(self) -> "FaultProxy":
        """Pass-through, listening, no stop trigger, an empty request log."""
        self.passthrough().start()
        with self._lock:
            self._stop_after = None
            self.requests.clear()
        return self

    def count(self, outcome: str = "", operation: str = "") -> int:
        with self._lock:
            return sum(1 for r in self.requests if (not outcome or r.outcome == outcome)
                       and (not operation or r.request.operation == operation))

    def reset_log(self) -> None:
        with self._lock:
            self.requests.clear()

    # -- listening ---------------------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def listening(self) -> bool:
        return self._server is not None

    def start(self) -> "FaultProxy":
        if self._server is not None:
            return self
        server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler_class())
        server.daemon_threads = True
        server.block_on_close = False
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True,
                                        name=f"faultproxy:{self.port}")
        self._thread.start()
        self.stopped_at = None
        return self

    def stop(self, keep: Optional[socket.socket] = None) -> "FaultProxy":
        """Stop listening: new connections are refused, open ones (but `keep`) are cut, held requests released
        (unanswered)."""
        with self._lock:
            server, self._server = self._server, None
            self._release.set()
            conns = [c for c in self._connections if c is not keep]
        if server is None:
            return self
        server.shutdown()
        server.server_close()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.stopped_at = time.monotonic()
        return self

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- the handler -------------------------------------------------------------------------------------------------
    def _decide(self, req: Request) -> tuple:
        with self._lock:
            mode, release = self._mode, self._release
            if mode[0] == "pass" or not self._match(req):
                return ("pass",), release
            self._seen += 1
            seen = self._seen
            if mode[0] == "fail":
                return (("fail", *mode[2:]) if seen % mode[1] == 0 else ("pass",)), release
            if mode[0] == "drop":
                return (("drop", mode[2]) if seen % mode[1] == 0 else ("pass",)), release
            if mode[0] == "delay":
                return ("delay", next(mode[1])), release
            if mode[0] == "reject":
                found = [name for name, _ in req.headers if name.startswith(mode[1])]
                if not found:
                    return ("pass",), release
                return ("fail", 400, "InvalidArgument",
                        f"Unsupported header '{found[0]}' received for this API call."), release
            return mode, release  # stall

    def _record(self, record: Record) -> None:
        with self._lock:
            self.requests.append(record)

    def _stop_now(self, req: Request) -> bool:
        """Whether `req`, forwarded and about to be answered, is the one `stop_after` waits for."""
        with self._lock:
            trigger = self._stop_after
            if not trigger or not trigger[1](req):
                return False
            self._stop_seen += 1
            if self._stop_seen < trigger[0]:
                return False
            self._stop_after = None
            return True

    def _true_initiated(self, req: Request, status: int, data: bytes) -> bytes:
        """moto reports every multipart upload as initiated on 2010-11-10: remember when each really started and
        put that time into ListMultipartUploads answers, so that age-based clean-ups see what a real store shows."""
        if status != 200:
            return data
        if req.operation == "CreateMultipartUpload":
            found = re.search(rb"<UploadId>([^<]+)</UploadId>", data)
            if found:
                now = datetime.datetime.now(datetime.timezone.utc)
                with self._lock:
                    self._initiated[found.group(1)] = now.strftime("%Y-%m-%dT%H:%M:%S.000Z").encode()
        elif req.operation == "ListMultipartUploads":
            def fix(upload: re.Match) -> bytes:
                block = upload.group(0)
                uid = re.search(rb"<UploadId>([^<]+)</UploadId>", block)
                when = self._initiated.get(uid.group(1)) if uid else None
                return re.sub(rb"<Initiated>[^<]*</Initiated>", b"<Initiated>" + when + b"</Initiated>", block) \
                    if when else block
            data = re.sub(rb"<Upload>.*?</Upload>", fix, data, flags=re.S)
        return data

    def _handler_class(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients expect

            def log_message(self, *args):
                pass

            def setup(self):
                super().setup()
                with proxy._lock:
                    proxy._connections.add(self.connection)

            def finish(self):
                with proxy._lock:
                    proxy._connections.discard(self.connection)
                try:
                    super().finish()
                except OSError:
                    pass

            def handle_expect_100(self):
                # Decide first: a failing request is answered before its body is sent (as S3 does); then the
                # connection closes, since the body the client may still send is never read.
                self._req = self._request()
                self._action, self._released = proxy._decide(self._req)
                if self._action[0] == "fail":
                    return True
                return super().handle_expect_100()

            def _request(self) -> Request:
                parts = urlsplit(self.path)
                return Request(self.command, parts.path, {k: v[0] if v else "" for k, v in
                                                          parse_qs(parts.query, keep_blank_values=True).items()},
                               tuple((k.lower(), v) for k, v in self.headers.items()))

            def _read_body(self) -> bytes:
                if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                    out = bytearray()
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return bytes(out)
                        out += self.rfile.read(size)
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _handle(self):
                started = time.monotonic()
                req = getattr(self, "_req", None) or self._request()
                action, released = (self._action, self._released) if hasattr(self, "_action") \
                    else proxy._decide(req)
                self.__dict__.pop("_req", None)
                self.__dict__.pop("_action", None)
                copy = bool(self.headers.get("x-amz-copy-source"))
                expecting = (self.headers.get("Expect") or "").lower() == "100-continue"
                if action[0] == "fail":
                    _, status, code, message = action
                    if not expecting:
                        self._read_body()
                    body = error_body(code, message, req.path, f"FAULTPROXY{len(proxy.requests):08d}")
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(body)))
                    if expecting:
                        self.send_header("Connection", "close")
                        self.close_connection = True
                    self.end_headers()
                    self.wfile.write(body)
                    proxy._record(Record(req, "failed", status, copy, time.monotonic() - started))
                    return
                body = self._read_body()
                if action[0] == "stall":
                    proxy._record(Record(req, "stalled", 0, copy, action[1]))  # now: the client gives up first
                    released.wait(action[1])
                    self.close_connection = True
                    return
                if action[0] == "delay":
                    released.wait(action[1])
                if action[0] == "drop" and not action[1]:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    proxy._record(Record(req, "dropped", 0, copy, time.monotonic() - started))
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                if body or self.command in ("PUT", "POST"):
                    headers["Content-Length"] = str(len(body))
                upstream = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=120)
                try:
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    resp = upstream.getresponse()
                    data = resp.read()
                    data = proxy._true_initiated(req, resp.status, data)
                    if action[0] == "pass" and proxy._stop_now(req):
                        # stopped before this answer goes out: the client's next request finds nobody listening
                        proxy.stop(keep=self.connection)
                        self.close_connection = True
                    if action[0] == "drop":  # after: the upstream applied it, the answer is lost
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        proxy._record(Record(req, "dropped", resp.status, copy, time.monotonic() - started))
                        return
                    self.send_response(resp.status, resp.reason)
                    for k, v in resp.getheaders():
                        if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
                            self.send_header(k, v)
                    length = resp.getheader("Content-Length") if self.command == "HEAD" else None
                    self.send_header("Content-Length", length or str(len(data)))
                    if self.close_connection:
                        self.send_header("Connection", "close")
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                    self.wfile.flush()
                finally:
                    upstream.close()
                proxy._record(Record(req, "forwarded", resp.status, copy, time.monotonic() - started))

            def handle_one_request(self):
                try:
                    super().handle_one_request()
                except (ConnectionError, OSError):
                    self.close_connection = True

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        return Handler
