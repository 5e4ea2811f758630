"""moto's S3 server, authenticating. Run by its path with moto's interpreter and `-P` (this folder on sys.path would
hide the `moto` and `http` packages behind moto.py and http.py): `python -P moto_auth.py -H 127.0.0.1 -p PORT`, the
access keys as JSON `{key_id: secret}` in MOTO_AUTH_KEYS. It gives each key an IAM user of its own in moto's default
account, then serves as `moto_server` does, with moto's IAM authentication on from the first request
(INITIAL_NO_AUTH_ACTION_COUNT = 0): a request signed (SigV4) with one of these keys is answered; an unknown key id
(InvalidAccessKeyId), a signature made with another secret (SignatureDoesNotMatch) or a request without an
Authorization header (AccessDenied, answered here: moto fails on it with a 500, and it does not check presigned URLs)
is refused with a 403. /moto-api/ stays open (the readiness probe).

The keys are the test's own (fixed per run), not moto's random ones: moto has no call that takes a key id or a
secret, so each key is created through moto's IAM backend and then given the chosen id and secret, in this process,
before the server starts.

What moto checks: the key id, and the signature over the method, path, query and signed headers, recomputed with
the key's secret. What it does not: the body against x-amz-content-sha256 (the client's hash is taken as given), the
age of X-Amz-Date. A request without x-amz-content-sha256 (curl's --aws-sigv4 before curl 8) is refused
(SignatureDoesNotMatch): moto then hashes its parsed parameters, not the empty body — AWS S3 refuses it too
("Missing required header for this request: x-amz-content-sha256").

Each user's policy allows s3:* and denies s3:BypassGovernanceRetention. moto 5 evaluates a request's policies for its
action (s3:PutObject, s3:DeleteObject, …) but never for s3:BypassGovernanceRetention: a delete of a GOVERNANCE-locked
version is refused (AccessDenied) without the bypass header, and allowed with it whatever the policy says."""

import argparse
import json
import os
import sys

KEYS_ENV = "MOTO_AUTH_KEYS"

POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Action": "s3:*", "Resource": "*"},
        {"Effect": "Deny", "Action": "s3:BypassGovernanceRetention", "Resource": "*"},
    ],
}

UNSIGNED = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code><Message>Access Denied'
            b" (the stand-in answers only requests with an Authorization header)</Message></Error>")


def add_keys(keys: dict[str, str]) -> None:
    """One IAM user per key, with POLICY and an access key whose id and secret are the given ones."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.iam.models import iam_backends

    iam = iam_backends[DEFAULT_ACCOUNT_ID]["aws"]
    for n, (key_id, secret) in enumerate(keys.items()):
        user = f"store-{n}"
        iam.create_user(region_name="us-east-1", user_name=user)
        iam.put_user_policy(user, "s3", json.dumps(POLICY))
        key = iam.create_access_key(user)
        # the user holds the key object authentication reads the secret from; the backend indexes keys by id (a
        # request's account is the one whose index holds its key id)
        del iam.access_keys[key.access_key_id]
        key.access_key_id, key.secret_access_key = key_id, secret
        iam.access_keys[key_id] = key


def refuse_unsigned(app):
    def wsgi(environ, start_response):
        if "HTTP_AUTHORIZATION" in environ or environ.get("PATH_INFO", "").startswith("/moto-api"):
            return app(environ, start_response)
        start_response("403 Forbidden", [("Content-Type", "application/xml"), ("Content-Length", str(len(UNSIGNED)))])
        return [b"" if environ["REQUEST_METHOD"] == "HEAD" else UNSIGNED]

    return wsgi


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, required=True)
    args = parser.parse_args(argv)
    keys = json.loads(os.environ.get(KEYS_ENV) or "{}")
    if not keys:
        sys.exit(f"{KEYS_ENV} names no access key: every request would be refused")

    from moto import settings
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import run_simple

    add_keys(keys)
    settings.INITIAL_NO_AUTH_ACTION_COUNT = 0  # authentication on from the first request (moto's own setting)
    os.environ.setdefault("MOTO_PORT", str(args.port))  # as moto_server does
    app = refuse_unsigned(DomainDispatcherApplication(create_backend_app))
    run_simple(args.host, args.port, app, threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main(sys.argv[1:])
