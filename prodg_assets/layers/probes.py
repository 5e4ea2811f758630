"""Health probes of the mainframe's services over their real protocols: SQL, RESP, S3, HTTP, TLS.

Each returns a list of problems (empty = healthy) in words an operator can act on; none ever includes a secret.
"""

from __future__ import annotations

import socket
import ssl
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    import requests

Addr = tuple[str, int]


def postgres_query(addr: Addr, user: str, password: str) -> list[str]:
    import psycopg2

    try:
        conn = psycopg2.connect(host=addr[0], port=addr[1], user=user, password=password, dbname="postgres",
                                connect_timeout=5)
    except psycopg2.Error as exc:
        return [f"postgres at {addr[0]}:{addr[1]} refused an authenticated connection: "
                f"{str(exc).strip().splitlines()[-1][:200]}"]
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            return [] if cur.fetchone() == (1,) else ["postgres answered SELECT 1 with something else"]
    finally:
        conn.close()


def redis_ping(addr: Addr, password: str) -> list[str]:
    def cmd(*args: str) -> bytes:
        return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args)

    try:
        with socket.create_connection(addr, timeout=5) as sock:
            sock.sendall(cmd("AUTH", password) + cmd("PING"))
            reply = b""
            while reply.count(b"\r\n") < 2:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                reply += chunk
    except OSError as exc:
        return [f"redis at {addr[0]}:{addr[1]} unreachable: {exc.strerror or exc}"]
    lines = reply.split(b"\r\n")
    if not lines[0].startswith(b"+OK"):
        return [f"redis refused AUTH: {lines[0][:80].decode(errors='replace')}"]
    if len(lines) < 2 or lines[1] != b"+PONG":
        return ["redis did not answer PING with PONG after AUTH"]
    return []


def s3_list_buckets(url: str, access_key: str, secret_key: str) -> list[str]:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        s3 = boto3.client("s3", endpoint_url=url, aws_access_key_id=access_key, aws_secret_access_key=secret_key,
                          region_name="us-east-1", config=Config(connect_timeout=5, retries={"max_attempts": 1}))
        s3.list_buckets()
    except (BotoCoreError, ClientError) as exc:
        return [f"S3 API at {url} did not list buckets: {type(exc).__name__}"]
    return []


def http_get(url: str, expect: int = 200, **kw) -> tuple[list[str], Optional[requests.Response]]:
    import requests  # imported on first probe: loading the code location does not pay for it

    try:
        resp = requests.get(url, timeout=5, **kw)
    except requests.RequestException as exc:
        return [f"GET {url} failed: {type(exc).__name__}"], None
    if resp.status_code != expect:
        return [f"GET {url} answered {resp.status_code}, expected {expect}"], resp
    return [], resp


def prometheus_targets(base: str, expected_jobs: list[str], settle_s: float = 30.0) -> tuple[list[str], dict[str, str]]:
    """Every expected job has targets and all are up. Targets not scraped yet ("unknown") are waited for, up to
    `settle_s`, so a check right after a (re)start judges real scrapes."""
    deadline = time.monotonic() + settle_s
    while True:
        problems, resp = http_get(f"{base}/api/v1/targets")
        if resp is None or problems:
            return problems, {}
        health: dict[str, str] = {}
        for t in resp.json().get("data", {}).get("activeTargets", []):
            job = t.get("labels", {}).get("job") or t.get("scrapePool", "?")
            health[job] = t.get("health", "unknown") if health.get(job, "up") == "up" else health[job]
        if (health and "unknown" not in health.values()) or time.monotonic() > deadline:
            break
        time.sleep(1)
    for job in expected_jobs:
        if job not in health:
            problems.append(f"target {job} is not configured in Prometheus")
        elif health[job] != "up":
            problems.append(f"target {job} is {health[job]}")
    return problems, health


def tls_certificate(addr: Addr, domain: str, cafile: Optional[str], warn_days: int) -> tuple[list[str], dict]:
    """Handshake with SNI `domain`; the certificate must be valid for it and not expire within `warn_days`."""
    from cryptography import x509

    ctx = ssl.create_default_context(cafile=cafile) if cafile else ssl.create_default_context()
    verify = True
    try:
        der = _peer_cert(addr, domain, ctx)
    except ssl.SSLCertVerificationError as exc:
        verify = False
        problem = f"{domain}: certificate does not verify: {exc.verify_message}"
        insecure = ssl.create_default_context()
        insecure.check_hostname, insecure.verify_mode = False, ssl.CERT_NONE
        try:
            der = _peer_cert(addr, domain, insecure)
        except (OSError, ssl.SSLError) as exc2:
            return [problem, f"{domain}: no TLS handshake: {exc2}"], {}
    except (OSError, ssl.SSLError) as exc:
        return [f"{domain}: no TLS handshake with {addr[0]}:{addr[1]}: {exc}"], {}
    cert = x509.load_der_x509_certificate(der)
    not_after = cert.not_valid_after_utc
    days = (not_after - datetime.now(timezone.utc)).total_seconds() / 86400
    info = {"domain": domain, "not_after": not_after.isoformat(), "days_left": round(days, 1),
            "issuer": cert.issuer.rfc4514_string(), "verified": verify}
    problems = [] if verify else [problem]
    if days < warn_days:
        problems.append(f"{domain}: certificate expires in {days:.1f} days (< {warn_days})")
    return problems, info


def _peer_cert(addr: Addr, domain: str, ctx: ssl.SSLContext) -> bytes:
    with socket.create_connection(addr, timeout=5) as sock:
        with ctx.wrap_socket(sock, server_hostname=domain) as tls:
            return tls.getpeercert(binary_form=True)
