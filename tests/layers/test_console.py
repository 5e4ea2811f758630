"""The console proven closed, through the test bed's real Caddy (the bundled Caddyfile's console site, with the bed's
own addresses for the tailnet's and Hermes standing in for the Dagster webserver): without credentials and with a
wrong password the request is refused, with the right one it passes; from an address that is not an operator's
(an application container on the same network) it is refused even with the right password. The password's hash
comes from the secret source, and a hash that is not one (empty, the old placeholder) fails the blocking secrets
check: the deploy stops before Caddy is touched."""

from __future__ import annotations

import base64
import socket
import ssl
import subprocess

import pytest

from ..conftest import CONSOLE_PASSWORD, TEST_SECRETS, Testbed
from .test_converge import check_problems, check_results

pytestmark = pytest.mark.docker
CONSOLE = "dagster.mainframe.prodg.studio"
STACK = "host_baseline,docker_network,secrets_env,postgres,redis,hermes_api,caddy"


def _basic(password: str) -> str:
    return "Basic " + base64.b64encode(f"ops:{password}".encode()).decode()


def console_status(bed: Testbed, password: str | None) -> int:
    """The HTTP status of GET /health on the console site, from this host (the bed's gateway address)."""
    ctx = ssl.create_default_context(cafile=bed.env["PRODG_TLS_CA_FILE"])
    auth = f"Authorization: {_basic(password)}\r\n" if password is not None else ""
    with socket.create_connection(("127.0.0.1", bed.published_port("caddy", 443)), timeout=10) as sock:
        with ctx.wrap_socket(sock, server_hostname=CONSOLE) as tls:
            tls.sendall(f"GET /health HTTP/1.1\r\nHost: {CONSOLE}\r\n{auth}Connection: close\r\n\r\n".encode())
            reply = tls.recv(4096)
    return int(reply.split(b" ", 2)[1])


FROM_A_CONTAINER = ("""
import base64, socket, ssl
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
with socket.create_connection(("caddy", 443), timeout=10) as sock:
    with ctx.wrap_socket(sock, server_hostname=%(host)r) as tls:
        tls.sendall(b"GET /health HTTP/1.1\\r\\nHost: %(host)s\\r\\nAuthorization: %(auth)s\\r\\n"""
                    """Connection: close\\r\\n\\r\\n")
        print(tls.recv(4096).split(b"\\r\\n\\r\\n", 1))
""")


@pytest.fixture()
def deployed(testbed: Testbed):
    result = testbed.materialize(selection=STACK)
    assert result.success, check_problems(result)
    yield testbed
    testbed.reset_to(testbed.commits[0])


def test_the_console_answers_only_the_operators_password_from_an_operators_address(deployed: Testbed):
    bed = deployed
    assert console_status(bed, None) == 401
    assert console_status(bed, "not-the-password") == 401
    assert console_status(bed, CONSOLE_PASSWORD) == 200
    # from an application container (not an operator's address): refused before the password is even asked for
    said = subprocess.run(["docker", "exec", f"{bed.project}-hermes-api", "python3", "-c",
                           FROM_A_CONTAINER % {"host": CONSOLE, "auth": _basic(CONSOLE_PASSWORD)}],
                          capture_output=True, text=True, timeout=60)
    assert said.stdout.startswith("[b'HTTP/1.1 403") and "tailnet only" in said.stdout, said.stdout + said.stderr


@pytest.mark.parametrize("value", ["", "$2a$14$replace.with.caddy.hash-password.output........", "hunter2"])
def test_a_console_hash_that_is_not_one_stops_the_deploy_before_caddy(deployed: Testbed, value: str):
    bed = deployed
    caddy_before = bed.containers()["caddy"].id
    path = bed.env["PRODG_SECRETS_FILE"]
    original = open(path).read()
    try:
        with open(path, "w") as fh:
            fh.write(original.replace(f"DAGSTER_UI_BASICAUTH_HASH={TEST_SECRETS['DAGSTER_UI_BASICAUTH_HASH']}",
                                      f"DAGSTER_UI_BASICAUTH_HASH={value}"))
        bed.edit("compose/Caddyfile", "respond \"tailnet only\" 403", "respond \"tailnet only, please\" 403")
        bed.commit("the console's refusal reworded (Caddy would be recreated)")
        blocked = bed.materialize(selection="secrets_env,caddy")
        assert check_results(blocked)["secrets_complete_and_private"] is False
        problem = check_problems(blocked)["secrets_complete_and_private"]
        assert "DAGSTER_UI_BASICAUTH_HASH" in problem
        assert ("is missing or empty" if not value else "is not a bcrypt hash") in problem
        assert not value or value not in problem
        assert not blocked.success and bed.containers()["caddy"].id == caddy_before
    finally:
        with open(path, "w") as fh:
            fh.write(original)
