"""Keep what a long feed set up out of the cyclic garbage collector's sight while it runs.

Why: the engine makes a few short-lived containers per window and per batch (a window's dicts,
its accumulator and sample, the lists of a flush), so the collector's young collections run
every few hundred of them, and each full collection it triggers walks every tracked object the
process holds: the imported modules (numpy, pyarrow, the scheduler), the inventory, the replay's
item index. That walk was ~13 % of the engine's time on a 1,000,000-line http.log
(docs/scheduler.md, "2026-12-04, evening"). `gc.freeze()` moves the objects alive at the start of
the feed to a permanent generation that collections skip; what the feed makes is collected as
before. The daemon freezes once after its start-up and never thaws (it lives as long as the
process); a replay thaws when it returns, so the pipeline it froze, and anything that became
cyclic garbage meanwhile, is collectable again (a backfill runs many replays in one process).
"""
from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def frozen_setup() -> Iterator[bool]:
    """Freeze the objects alive now for the duration of the block; yields whether this call
    froze them. Inside a process that froze already (the daemon), or in a nested call, it does
    nothing: thawing there would hand the outer freeze's objects back to the collector."""
    if gc.get_freeze_count():
        yield False
        return
    gc.freeze()
    try:
        yield True
    finally:
        gc.unfreeze()
