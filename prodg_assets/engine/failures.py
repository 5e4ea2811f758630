"""What the Engine's operations fail with, in the operator's words (shared by images, apply and the assets), and
how an unanswered Engine is told from one that answered with an error."""

from ..lazy import docker_errors


def engine_unreachable(exc: BaseException) -> bool:
    """The Engine did not answer at all (socket gone, daemon down, connection cut or timed out) — as opposed to
    answering with an error."""
    import requests

    return isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)) or (
        isinstance(exc, docker_errors.DockerException) and not isinstance(exc, docker_errors.APIError)
        and "Error while fetching server API version" in str(exc))


class ApplyFailed(Exception):
    """A service could not be brought to its desired state; the previous container (if any) is back in service."""

    def __init__(self, service: str, reason: str, logs: str = ""):
        self.service, self.reason, self.logs = service, reason, logs
        super().__init__(f"{service}: {reason}" + (f"\n--- last log lines ---\n{logs}" if logs else ""))


class ImageUnavailable(Exception):
    """The image a service runs is neither on the Engine nor buildable from here."""
