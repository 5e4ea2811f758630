"""A bound on an Engine call that streams for as long as its work goes on (an image build, an image pull): when the
bound passes, the call's connection is shut down, which is how the Engine is told to stop — it cancels the pull,
and kills and removes the build's running step container — and the caller's read returns at once.

A stalled build or pull writes nothing, so a read timeout would not end it (the Docker SDK reads a pull with none
at all), and a build that keeps printing would outlive any idle timeout: the bound is on the whole call. The
connection is found through a response hook of the SDK's HTTP session, for this thread's call of that path only."""

from __future__ import annotations

import socket
import threading
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    import docker


class Deadline:
    """`with Deadline(api, seconds, "/build") as bound:` — the calls to that Engine path made by this thread inside
    the block are cut off `seconds` after it began; `bound.passed` says whether that happened."""

    def __init__(self, api: docker.APIClient, seconds: float, path: str):
        self.api, self.seconds, self.path = api, seconds, path
        self.passed = False
        self._thread = threading.get_ident()
        self._responses: list = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._cut)
        self._timer.daemon = True

    def __enter__(self) -> "Deadline":
        self.api.hooks.setdefault("response", []).append(self._hook)
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()
        try:
            self.api.hooks["response"].remove(self._hook)
        except ValueError:
            pass

    def _hook(self, response, *args, **kwargs):
        if threading.get_ident() == self._thread and response.request.path_url.split("?")[0].endswith(self.path):
            with self._lock:
                self._responses.append(response)
                passed = self.passed
            if passed:  # the bound passed while the request was still being sent
                _shut(response)
        return response

    def _cut(self) -> None:
        with self._lock:
            self.passed = True
            responses = list(self._responses)
        for response in responses:
            _shut(response)


def _shut(response) -> None:
    """Shut the connection a streamed response is read from: the Engine sees its client gone, a blocked read
    returns."""
    sock = getattr(getattr(response.raw, "connection", None), "sock", None)
    try:
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
        else:  # a transport without a socket of its own (ssh): closing the response is what is left
            response.close()
    except OSError:  # already closed: nothing to cut
        pass


def streamed(lines: Iterator[dict], bound: Deadline) -> Iterator[dict]:
    """The decoded progress lines of a streamed Engine call, ending (without an error of its own) when `bound`
    cut it off; the caller checks `bound.passed`."""
    try:
        yield from lines
    except Exception:
        if not bound.passed:
            raise
