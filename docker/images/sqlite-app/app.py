"""A stand-in for the stack's SQLite-backed services (Vaultwarden, Headscale, Grafana keep a SQLite database in their
data volume): it keeps writing to a WAL-mode SQLite database while it runs, so a backup taken of it races real writes,
and it answers a service-level probe of the database's contents. Python standard library only.

Environment:
  SQLITE_APP_DB                 the database file (default /data/app.sqlite3); created, with its folder, if missing,
                                in WAL mode (PRAGMA journal_mode=WAL) with the table
                                entries(id INTEGER PRIMARY KEY, written_at TEXT, payload BLOB).
  SQLITE_APP_WRITE_INTERVAL_MS  one transaction inserting one row (a random payload of 1-4 KiB) every this many
                                milliseconds (default 50); 0: none after the seed (the database is still opened
                                for writing, in WAL mode, as the service would open it).
  SQLITE_APP_SEED_ROWS          rows inserted at start, in one transaction, when the table is empty (default 0), so a
                                test can have some MiB of data at once.
  SQLITE_APP_PORT               the HTTP port, on 0.0.0.0 (default 8080).
  SQLITE_APP_READONLY           1 (or true/yes): write nothing; the database must exist (exit 1 otherwise) and is
                                opened read-only - the probe of a restored copy. Default 0. Read-only is mode=ro, and
                                also immutable=1 when there is no -wal file next to it (so the probe leaves no -wal or
                                -shm behind and works on a read-only mount).

HTTP:
  GET /alive  200 "ok" (the healthcheck).
  GET /check  200 {"integrity": "ok" (PRAGMA integrity_check's rows, joined by newlines), "rows": count(*),
              "max_id": max(id) or null, "sha256": hex sha256 over every row in id order of
              8-byte big-endian id, 4-byte big-endian payload length, payload} - all read in one read transaction on a
              connection of its own, so it is one consistent snapshot. 500 {"error": "..."} when SQLite fails (e.g.
              the file is not a database).

SIGTERM (or SIGINT) stops the writer after its current transaction, closes the database (the last connection's close
checkpoints the WAL into the database file) and exits 0. The program runs as PID 1, hence the handler.
"""

import hashlib
import http.server
import json
import os
import random
import signal
import sqlite3
import struct
import sys
import threading
import time
from datetime import datetime, timezone

DB = os.environ.get("SQLITE_APP_DB", "/data/app.sqlite3")
WRITE_INTERVAL = int(os.environ.get("SQLITE_APP_WRITE_INTERVAL_MS", "50")) / 1000.0
SEED_ROWS = int(os.environ.get("SQLITE_APP_SEED_ROWS", "0"))
PORT = int(os.environ.get("SQLITE_APP_PORT", "8080"))
READONLY = os.environ.get("SQLITE_APP_READONLY", "0").strip().lower() in ("1", "true", "yes")
BUSY_TIMEOUT_MS = 10000

stop = threading.Event()


def log(message):
    print(f"sqlite-app: {message}", file=sys.stderr, flush=True)


def connect(readonly):
    if readonly:
        # No -wal file: nothing can be in a WAL, so immutable=1 (no locks, no -wal/-shm created next to a restored
        # copy, works on a read-only mount, where mode=ro cannot create the -shm a WAL-mode database needs).
        # A -wal file (a live database, or a copy taken with its WAL): mode=ro, which reads the WAL's commits too.
        query = "mode=ro" if os.path.exists(DB + "-wal") else "mode=ro&immutable=1"
        conn = sqlite3.connect(f"file:{DB}?{query}", uri=True, isolation_level=None, check_same_thread=False)
    else:
        conn = sqlite3.connect(DB, isolation_level=None, check_same_thread=False)  # opened here, used by the writer
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    return conn


def row(i=None):
    payload = os.urandom(random.randint(1024, 4096))
    return (i, datetime.now(timezone.utc).isoformat(timespec="microseconds"), payload)


def open_writer():
    os.makedirs(os.path.dirname(os.path.abspath(DB)), exist_ok=True)
    conn = connect(readonly=False)
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if mode.lower() != "wal":
        raise SystemExit(f"sqlite-app: {DB}: journal_mode is {mode}, not wal")
    conn.execute("CREATE TABLE IF NOT EXISTS entries(id INTEGER PRIMARY KEY, written_at TEXT, payload BLOB)")
    if SEED_ROWS > 0 and conn.execute("SELECT count(*) FROM entries").fetchone()[0] == 0:
        started = time.monotonic()
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO entries(id, written_at, payload) VALUES (?, ?, ?)",
                         (row() for _ in range(SEED_ROWS)))
        conn.execute("COMMIT")
        log(f"seeded {SEED_ROWS} rows in {time.monotonic() - started:.2f}s")
    return conn


def write_loop(conn):
    written = 0
    next_at = time.monotonic()
    while not stop.is_set():
        try:
            conn.execute("INSERT INTO entries(id, written_at, payload) VALUES (?, ?, ?)", row())
            written += 1
        except sqlite3.OperationalError as e:  # busy/locked beyond busy_timeout: try again at the next tick
            log(f"write failed: {e}")
        next_at += WRITE_INTERVAL
        delay = next_at - time.monotonic()
        if delay < 0:
            next_at = time.monotonic()
            delay = 0
        stop.wait(delay)
    log(f"writer stopped after {written} rows")


def check():
    conn = connect(readonly=True)
    try:
        conn.execute("BEGIN")  # one read transaction: one snapshot for every figure below
        integrity = "\n".join(r[0] for r in conn.execute("PRAGMA integrity_check"))
        rows, max_id = conn.execute("SELECT count(*), max(id) FROM entries").fetchone()
        digest = hashlib.sha256()
        for i, payload in conn.execute("SELECT id, payload FROM entries ORDER BY id"):
            payload = payload or b""
            digest.update(struct.pack(">qI", i, len(payload)))
            digest.update(payload)
        conn.execute("COMMIT")
        return {"integrity": integrity, "rows": rows, "max_id": max_id, "sha256": digest.hexdigest()}
    finally:
        conn.close()


class Handler(http.server.BaseHTTPRequestHandler):
    def _send(self, status, body, content_type):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/alive":
            self._send(200, "ok", "text/plain")
        elif self.path == "/check":
            try:
                self._send(200, json.dumps(check()), "application/json")
            except sqlite3.Error as e:
                self._send(500, json.dumps({"error": f"{type(e).__name__}: {e}"}), "application/json")
        else:
            self._send(404, "not found", "text/plain")

    def log_message(self, format, *args):
        if self.path != "/alive":  # the healthcheck's every few seconds would drown the log
            log(f"{self.address_string()} {format % args}")


def main():
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    writer = writer_conn = None
    if READONLY:
        if not os.path.isfile(DB):
            raise SystemExit(f"sqlite-app: {DB}: no such database (SQLITE_APP_READONLY=1 never creates one)")
        log(f"read-only on {DB}")
    else:
        writer_conn = open_writer()
        if WRITE_INTERVAL > 0:
            writer = threading.Thread(target=write_loop, args=(writer_conn,), name="writer")
            writer.start()
            log(f"writing to {DB} every {WRITE_INTERVAL * 1000:g} ms")
        else:
            log(f"{DB} open for writing; no writes after the seed (SQLITE_APP_WRITE_INTERVAL_MS=0)")
    server = http.server.ThreadingHTTPServer(("0.0.0.0", PORT), Handler)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    log(f"listening on 0.0.0.0:{PORT}")
    while not stop.wait(0.5):
        if writer is not None and not writer.is_alive():  # the writer died of an unexpected error
            server.shutdown()
            raise SystemExit("sqlite-app: the writer stopped unexpectedly")
    log("stopping")
    server.shutdown()
    server.server_close()
    if writer is not None:
        writer.join()
        writer_conn.close()
    log("stopped")


if __name__ == "__main__":
    main()
