"""Verdicts once per distinct command line: a bounded memo for pure per-string rule decisions.

Why: on a busy host osquery reports one `container_process_events` row per exec, but the command
lines repeat (bench/bench_osquery_ingest.py: 200,000 exec events held 1,499 distinct command
lines). The T1614 command classifier and the misuse recognisers are pure functions of the command
line (and of the process name and path), and they were most of the rule CPU per row. Deciding
each distinct input once is what batching pays for on this path; a columnar reader would not
(parsing is a quarter of the CPU).

Only pure decisions may be wrapped: same strings in, same verdict out, no state read or written.
Anything stateful (first-seen sets, rate counters, the detectors' memories) stays per row.

Bounds: at most `maxsize` entries (least recently used dropped), and inputs longer than
`max_chars` in total are decided without the memo, so the memo holds at most
`maxsize * max_chars` characters of keys whatever the host runs (a hostile stream of unique, huge
command lines costs only the plain call). Verdicts must be immutable (str, tuples, frozen
records), since every caller of one input gets the same object.
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, TypeVar

#: Entries per memo: a few times the distinct command lines a busy host showed (1,499).
DEFAULT_MAXSIZE = 4096
#: Longest input (all arguments' lengths summed) that is memoised.
DEFAULT_MAX_CHARS = 4096

F = TypeVar("F", bound=Callable[..., Any])


def per_distinct(maxsize: int = DEFAULT_MAXSIZE,
                 max_chars: int = DEFAULT_MAX_CHARS) -> Callable[[F], F]:
    """Decorator: memoise a pure function of strings in a bounded LRU.

    The wrapper keeps the plain function as `.uncached` (tests compare the two forms),
    `.cache_info()` / `.cache_clear()` from `functools.lru_cache`, and `.maxsize`/`.max_chars`.
    Arguments that are not sized or not hashable (None, lists) go to the plain function, which
    answers exactly as it would have without the memo. A function of one or three plain
    parameters is called positionally only (the hot callers do; a keyword call is a TypeError)."""
    if maxsize <= 0:
        raise ValueError("maxsize must be positive (a bounded memo)")

    def wrap(fn: F) -> F:
        memo = functools.lru_cache(maxsize=maxsize)(fn)
        cached = functools.wraps(fn)(_front(fn, memo, max_chars))
        cached.uncached = fn                    # type: ignore[attr-defined]
        cached.cache_info = memo.cache_info     # type: ignore[attr-defined]
        cached.cache_clear = memo.cache_clear   # type: ignore[attr-defined]
        cached.maxsize = maxsize                # type: ignore[attr-defined]
        cached.max_chars = max_chars            # type: ignore[attr-defined]
        return cached                           # type: ignore[return-value]

    return wrap


def _front(fn: Callable[..., Any], memo: Callable[..., Any], max_chars: int) -> Callable[..., Any]:
    """The call in front of the memo: the length bound, then the memo or the plain call.

    Why specialised: this runs several times per process row, and a fixed arity saves packing
    `*args` and summing lengths through `map` (about 0.6 us a call here, a few % of the osquery
    path). Other shapes get the generic form, which also takes keywords."""
    code = getattr(fn, "__code__", None)
    plain = (code is not None and not code.co_flags & (inspect.CO_VARARGS | inspect.CO_VARKEYWORDS)
             and not code.co_kwonlyargcount and not getattr(fn, "__defaults__", None))
    arity = code.co_argcount if plain else -1

    if arity == 1:
        def one(a: Any, /) -> Any:
            try:
                if len(a) <= max_chars:
                    return memo(a)
            except TypeError:       # not sized / not hashable: the plain call decides
                pass
            return fn(a)
        return one

    if arity == 3:
        def three(a: Any, b: Any, c: Any, /) -> Any:
            try:
                if len(a) + len(b) + len(c) <= max_chars:
                    return memo(a, b, c)
            except TypeError:
                pass
            return fn(a, b, c)
        return three

    def generic(*args: Any, **kwargs: Any) -> Any:
        if kwargs:
            return fn(*args, **kwargs)
        try:
            if sum(map(len, args)) <= max_chars:
                return memo(*args)
        except TypeError:
            # len() or hash() refused an argument (or the function raised TypeError itself,
            # which the plain call below raises again): decide without the memo.
            pass
        return fn(*args)
    return generic
