"""Read a file's batches ahead, in a thread, while the engine works on the previous ones.

Why: in a replay or backfill the columnar reader is about a third of the Zeek path, and most of
it is pyarrow's CSV parse and zlib's inflate, which run without the GIL. Reading the next batch in
a second thread while the engine (Python, holding the GIL) works on the current one overlaps the
two on a machine with a spare core: the same batches in the same order, sooner. It costs a
little CPU (the hand-over) and `depth` batches of memory (about 1 MiB of text each, plus their
columns).

The batches and their order are the reader's own: only where the reading runs changes, so what
the engine computes from them is unchanged. An exception the reader raises reaches the consumer
at the point in the sequence where it happened. A consumer that stops early (a replay that ends,
a file dropped once its last indexed batch is read) closes the generator: the thread stops and
closes the reader (its file) within one batch.
"""
from __future__ import annotations

import queue
import threading
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")

#: batches read ahead of the consumer
DEFAULT_DEPTH = 2
_POLL_S = 0.05         # how often a reader waiting for room checks that it is still wanted


class _End:
    """The reader ended (`error`: with this exception)."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


def read_ahead(source: Iterable[T], depth: int = DEFAULT_DEPTH, name: str = "read-ahead"
               ) -> Iterator[T]:
    """The items of `source`, read up to `depth` ahead in a daemon thread (see the module
    docstring). `depth` < 1 reads in the caller's thread, as `source` itself would."""
    if depth < 1:
        yield from source
        return
    slots: queue.Queue = queue.Queue(maxsize=depth)
    wanted = threading.Event()
    wanted.set()

    def hand_over(item: object) -> bool:
        """Put `item` for the consumer; False when the consumer left first."""
        while wanted.is_set():
            try:
                slots.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        it = iter(source)
        try:
            for item in it:
                if not hand_over(item):
                    return
            hand_over(_End())
        except BaseException as exc:     # handed to the consumer, raised there
            hand_over(_End(exc))
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=work, name=name, daemon=True)
    thread.start()
    try:
        while True:
            item = slots.get()
            if isinstance(item, _End):
                if item.error is not None:
                    raise item.error
                return
            yield item
    finally:
        wanted.clear()
        thread.join()
