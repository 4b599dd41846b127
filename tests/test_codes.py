"""model.codes.factorize: the engine's grouping, without pandas in the process."""
from __future__ import annotations

import random
import subprocess
import sys

import numpy as np
import pytest

from model.codes import SMALL, factorize


def _reference(values: list) -> tuple[list[int], list]:
    index: dict = {}
    return [index.setdefault(v, len(index)) for v in values], list(index)


@pytest.mark.parametrize("n", [0, 1, 5, SMALL - 1, SMALL, 5000])
@pytest.mark.parametrize("kind", ["text", "unique", "numbers", "none", "tuples", "unicode"])
def test_codes_and_first_appearance_order(n: int, kind: str) -> None:
    rng = random.Random(n)
    make = {"text": lambda: f"host{rng.randrange(30)}.example",
            "unique": lambda: f"C{rng.getrandbits(64):x}",
            "numbers": lambda: rng.choice([80, 443, "80", 8080]),
            "none": lambda: rng.choice(["a", "b", None, ""]),
            "tuples": lambda: (rng.randrange(3), "tcp"),
            "unicode": lambda: rng.choice(["ä.example", "例え.jp", "x", ""])}[kind]
    values = [make() for _ in range(n)]
    arr = np.empty(n, dtype=object)
    arr[:] = values
    codes, uniques = factorize(arr)
    want_codes, want_uniques = _reference(values)
    assert codes.dtype == np.int64 and codes.tolist() == want_codes
    assert uniques.dtype == object and uniques.tolist() == want_uniques
    assert uniques[codes].tolist() == values
    list_codes, list_uniques = factorize(values)          # a plain list works the same
    assert list_codes.tolist() == want_codes and list_uniques.tolist() == want_uniques


def test_the_daemon_and_the_replay_do_not_import_pandas() -> None:
    code = ("import sys, scheduler.daemon, scheduler.replay, scheduler.pipeline, "
            "model.windowstore, model.features; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('pandas', 'sklearn', 'scipy')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"
