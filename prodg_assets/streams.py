"""Byte streams from a producer to a consumer, whatever produces them (a process in a container, a helper's FIFO,
`git archive`): the failure of a producer whose output must not be kept (`ProducerFailed`), the tail of its stderr
(`TailBuffer`), and a read-ahead thread that keeps the producer writing while the consumer works (`read_ahead`)."""

from __future__ import annotations

import queue
import threading
from typing import Callable, Iterator


class ProducerFailed(Exception):
    """The process producing a backup's bytes failed; its output is incomplete and must not be kept."""


class TailBuffer:
    """The last `limit` bytes written to it (stderr of a producer)."""

    def __init__(self, limit: int = 64 * 1024):
        self.limit, self.data = limit, bytearray()

    def write(self, chunk: bytes) -> None:
        self.data += chunk
        if len(self.data) > self.limit:
            del self.data[:len(self.data) - self.limit]

    def text(self, redact: Callable[[str], str] = lambda s: s, lines: int = 15) -> str:
        tail = self.data.decode("utf-8", "replace").strip().splitlines()[-lines:]
        return redact("\n".join(tail))


def read_ahead(source: Iterator[bytes], depth: int, name: str, unblock: Callable[[], None]) -> Iterator[bytes]:
    """The items of `source`, read in a thread of their own up to `depth` items ahead of the consumer, so the
    producer keeps writing while the consumer compresses or uploads. An exception of `source` reaches the consumer
    in order. The generator itself stays in the consumer's thread: when it is closed early (or fails), `unblock`
    runs there and then — it must make a thread blocked inside `source` return (shut its socket, kill its writer)."""
    ahead: queue.Queue = queue.Queue(max(1, depth))
    stop = threading.Event()
    end = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                ahead.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for item in source:
                if not put(item):
                    return
            put(end)
        except BaseException as exc:  # handed to the consumer (or dropped once it has gone)
            put(exc)

    reader = threading.Thread(target=read, name=f"reader-{name}", daemon=True)
    finished = False
    try:
        reader.start()
        while True:
            item = ahead.get()
            if item is end:
                break
            if isinstance(item, BaseException):
                raise item
            yield item
        reader.join()
        finished = True
    finally:
        stop.set()
        if not finished:
            unblock()
        if reader.ident is not None:
            reader.join(timeout=10)
