"""Documented defaults are the code's defaults (issue 10 item 8).

Two places tell users what a setting defaults to: the configuration table of docs/scheduler.md
and stowaway.example.toml ("the values below are the defaults"). Both are read here and compared
with `Config()`, so a default changed in code without its docs (the window length once said 300 s
in the docs while the code used 60 s) fails the suite.
"""
from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from scheduler.config import Config

REPO = Path(__file__).resolve().parents[1]
SCHEDULER_MD = REPO / "docs" / "scheduler.md"
EXAMPLE = REPO / "stowaway.example.toml"


def config_value(cfg: Any, dotted: str) -> Any:
    obj = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def parse_literal(cell: str) -> tuple[bool, Any]:
    """A documented default as a Python value: (True, value), or (False, None) for prose."""
    cell = cell.strip()
    m = re.fullmatch(r"`([^`]*)`(?:\s*\(.*\))?", cell)
    if not m:
        if cell == "off":
            return True, False
        return False, None
    text = m.group(1).strip()
    try:
        return True, tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        # An unquoted path or address (`/var/lib/stowaway/state.db`, `127.0.0.1`) is a string.
        return (True, text) if re.fullmatch(r"[\w./:-]+", text) else (False, None)


def split_cells(cell: str) -> list[str]:
    """`a`, `b` -> ['`a`', '`b`'] (commas inside backticks stay)."""
    return [c.strip() for c in re.findall(r"`[^`]*`(?:\s*\([^)]*\))?|[^,`]+", cell) if c.strip()]


def documented_defaults() -> list[tuple[str, Any]]:
    """(dotted key, value) from every row of the configuration table that states a literal."""
    rows = []
    in_table = False
    for line in SCHEDULER_MD.read_text().splitlines():
        if re.match(r"\|\s*key\s*\|\s*default\s*\|", line):
            in_table = True
            continue
        if in_table and not line.startswith("|"):
            in_table = False
        if not in_table or line.startswith("| ---"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2:
            continue
        keys = [k.strip("` ") for k in split_cells(cells[0])]
        values = split_cells(cells[1])
        if len(keys) != len(values) or any("*" in k or "/" in k for k in keys):
            continue
        prefix = keys[0].rsplit(".", 1)[0] + "." if "." in keys[0] else ""
        for i, (key, val) in enumerate(zip(keys, values)):
            ok, value = parse_literal(val)
            if not ok:
                continue
            rows.append((key if i == 0 or "." in key else prefix + key, value))
    return rows


def test_the_documented_table_is_found_and_large():
    rows = documented_defaults()
    assert len(rows) >= 25, rows     # the parser must keep finding the table


@pytest.mark.parametrize("key,value", documented_defaults())
def test_docs_default_equals_config(key, value):
    actual = config_value(Config(), key)
    if isinstance(actual, float) or isinstance(value, float):
        assert float(actual) == pytest.approx(float(value)), key
    else:
        assert actual == value, key


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v and all(isinstance(x, dict) for x in [v]) and \
                not _is_leaf_table(prefix + k):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _is_leaf_table(dotted: str) -> bool:
    """Table-valued settings (a dict field of the dataclass), not sections."""
    try:
        return isinstance(config_value(Config(), dotted), dict)
    except AttributeError:
        return False


def test_example_toml_spells_out_the_defaults():
    example = _flatten(tomllib.loads(EXAMPLE.read_text()))
    assert len(example) >= 30
    cfg = Config()
    for key, value in example.items():
        actual = config_value(cfg, key)
        if dataclasses.is_dataclass(actual):
            pytest.fail(f"{key}: a section given a value in the example")
        if isinstance(actual, float):
            assert float(value) == pytest.approx(actual), key
        else:
            assert value == actual, key


@pytest.mark.parametrize("doc", ["features.md", "model.md"])
def test_window_length_in_prose_matches_config(doc):
    text = (REPO / "docs" / doc).read_text()
    stated = {int(m) for m in re.findall(r"default (\d+) s", text)}
    assert stated, f"docs/{doc} no longer states the window's default"
    assert stated == {int(Config().detection.window_s)}, f"docs/{doc}: {stated}"
