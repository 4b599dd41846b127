"""The package layout is the data flow: imports point down it and never go round in a circle.

Every module's imports are read with `ast` (lazy imports inside functions count too: they are
still a dependency, only a later one). The allowed direction is data, below: a module may import
a stage of lower or equal rank, never a higher one. The lab in scheduler/emulate sits beside the
flow and may use only the public top level and the documented file formats. The osquery extension
runs on every host, so it imports neither the model nor the scheduler; the model is a library the
scheduler uses, so it never imports the scheduler. docs/architecture.md describes the same rules.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("osquery_ext", "model", "scheduler")

# Stage -> rank. A stage is a subpackage or a top-level module of scheduler/.
RANK: dict[str, int] = {
    "scheduler.config": 0,      # settings: a leaf that every stage may read
    "scheduler.collect": 0,
    "scheduler.memtrim": 0,     # process upkeep (freed heap back to the OS): a leaf the daemon calls
    "scheduler.gcfreeze": 0,    # process upkeep (the set-up out of the collector's sight): the replay's
    "scheduler.detect": 1,
    "scheduler.alerting": 2,
    "scheduler.pipeline": 3,    # the engine, and the two ways to drive it in batch / as a daemon
    "scheduler.replay": 3,
    "scheduler.backfill": 3,    # replay per host of a day's rotated logs, in one process or on Dask
    "scheduler.daemon": 3,
    "scheduler.cli": 4,
}
EMULATE = "scheduler.emulate"
# What the emulation lab may use: the public top level and the file formats it writes and reads
# (recordings, Zeek logs, osquery results lines), which are contracts in docs/architecture.md.
EMULATE_MAY_IMPORT = frozenset({
    "scheduler", "scheduler.config", "scheduler.pipeline", "scheduler.replay",
    "scheduler.collect.recording", "scheduler.collect.zeeklog", "scheduler.collect.osquery_results",
})
EMULATE_USED_BY = frozenset({"scheduler.cli"})
# The daemon's scoring path: importing these must not import scikit-learn, SciPy or joblib
# (~195 MiB of the daemon's RSS). Module-level imports count, followed through this repository's
# modules; imports inside functions do not (training and the fallback for a store without
# compiled files import scikit-learn when they run, and only then). tests/test_compiled.py checks
# the running daemon's sys.modules too.
SKLEARN_FREE = ("model.images", "model.scoring", "model.compiled", "model.store",
                "model.windowstore", "model.retrain", "scheduler.pipeline", "scheduler.daemon")
HEAVY = frozenset({"sklearn", "scipy", "joblib"})
# package -> top-level packages of this repository it must never import
FORBIDDEN: dict[str, frozenset[str]] = {
    "osquery_ext": frozenset({"model", "scheduler"}),
    "model": frozenset({"scheduler"}),
}


def module_name(path: Path, root: Path) -> str:
    """Dotted module name of a .py file under root (a package's __init__ is the package)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_names(module: str, source: str, is_package: bool, filename: str = "<src>") -> set[str]:
    """Every dotted name `module` imports, relative imports resolved; `from a import b` gives
    a.b, which the caller walks up to the nearest real module (a.b if b is one, else a)."""
    tree = ast.parse(source, filename=filename)
    pkg = module if is_package else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = pkg.split(".")
                base_parts = base_parts[:len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return out


def import_graph(sources: dict[str, tuple[str, bool]]) -> dict[str, set[str]]:
    """module -> the repository modules it imports, from {module: (source, is_package)}."""
    graph: dict[str, set[str]] = {}
    for mod, (src, is_pkg) in sources.items():
        names = imported_names(mod, src, is_pkg, filename=mod)
        targets = set()
        for name in names:
            # a name is a module of ours, or an attribute of the nearest module of ours above it
            while name and name not in sources:
                name = name.rpartition(".")[0]
            if name and name != mod:
                targets.add(name)
        graph[mod] = targets
    return graph


def eager_imports(module: str, source: str, is_package: bool) -> set[str]:
    """What `module` imports when it is imported: module level, class bodies, if/try blocks;
    not function bodies, not `if TYPE_CHECKING:` blocks. Names as imported_names gives them."""
    tree = ast.parse(source)
    kept: list[ast.stmt] = []

    def walk(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                kept.append(node)
            elif isinstance(node, ast.If):
                test = node.test
                name = test.id if isinstance(test, ast.Name) else \
                    test.attr if isinstance(test, ast.Attribute) else ""
                if name != "TYPE_CHECKING":
                    walk(node.body)
                walk(node.orelse)
            elif isinstance(node, (ast.Try, ast.With, ast.ClassDef)):
                walk(node.body)
                for h in getattr(node, "handlers", []):
                    walk(h.body)
                walk(getattr(node, "orelse", []))
                walk(getattr(node, "finalbody", []))
    walk(tree.body)
    return imported_names(module, ast.unparse(ast.Module(body=kept, type_ignores=[])), is_package)


def heavy_at_import(module: str, sources: dict[str, tuple[str, bool]]) -> list[list[str]]:
    """Chains of module-level imports from `module` to a HEAVY package (empty: none)."""
    found: list[list[str]] = []
    seen: set[str] = set()

    def visit(mod: str, chain: list[str]) -> None:
        if mod in seen:
            return
        seen.add(mod)
        src, is_pkg = sources[mod]
        for name in sorted(eager_imports(mod, src, is_pkg)):
            if name.split(".")[0] in HEAVY:
                found.append(chain + [name])
                continue
            while name and name not in sources:
                name = name.rpartition(".")[0]
            if name and name != mod:
                visit(name, chain + [name])
    visit(module, [module])
    return found


def stage_of(module: str) -> str | None:
    """The stage (subpackage or top-level module of scheduler) a scheduler module belongs to."""
    parts = module.split(".")
    if parts[0] != "scheduler" or len(parts) == 1:
        return None
    return ".".join(parts[:2])


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's SCCs with more than one member (or a self-loop): the import cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles between scheduler modules and between scheduler stages."""
    sched = {m: {t for t in ts if t.startswith("scheduler.")} for m, ts in graph.items()
             if m.startswith("scheduler.")}
    stages: dict[str, set[str]] = {}
    for m, ts in sched.items():
        s = stage_of(m)
        if s is None:
            continue
        stages.setdefault(s, set()).update(t for t in map(stage_of, ts) if t and t != s)
    return _strongly_connected(sched) + _strongly_connected(stages)


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Imports against the flow, each as 'importer -> imported: why'."""
    out = []
    for mod, targets in sorted(graph.items()):
        top = mod.split(".")[0]
        for t in sorted(targets):
            if t.split(".")[0] in FORBIDDEN.get(top, ()):
                out.append(f"{mod} -> {t}: {top} must not import {t.split('.')[0]}")
                continue
            src, dst = stage_of(mod), stage_of(t)
            if src is None or dst is None or src == dst:
                continue
            if src == EMULATE:
                if t not in EMULATE_MAY_IMPORT:
                    out.append(f"{mod} -> {t}: the emulation lab uses only the public API "
                               f"({', '.join(sorted(EMULATE_MAY_IMPORT))})")
            elif dst == EMULATE:
                if src not in EMULATE_USED_BY:
                    out.append(f"{mod} -> {t}: only {', '.join(sorted(EMULATE_USED_BY))} drives the lab")
            elif src not in RANK or dst not in RANK:
                out.append(f"{mod} -> {t}: stage {src if src not in RANK else dst} has no rank "
                           "in tests/test_layout.py")
            elif RANK[dst] > RANK[src]:
                out.append(f"{mod} -> {t}: {src} (rank {RANK[src]}) imports {dst} "
                           f"(rank {RANK[dst]}), against the flow")
    return out


def repo_sources() -> dict[str, tuple[str, bool]]:
    """{module: (source, is_package)} for every module of the three packages."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            if "demo_data" in path.parts:
                continue
            out[module_name(path, REPO)] = (path.read_text(encoding="utf-8"), path.name == "__init__.py")
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(repo_sources())


def test_every_scheduler_stage_has_a_rank(graph):
    stages = {stage_of(m) for m in graph} - {None, EMULATE}
    assert stages <= set(RANK), f"stages without a rank: {sorted(stages - set(RANK))}"
    assert {"scheduler.collect", "scheduler.detect", "scheduler.alerting", "scheduler.cli",
            "scheduler.emulate", "scheduler.pipeline"} <= {stage_of(m) for m in graph}


def test_no_import_cycles(graph):
    assert cycles(graph) == []


def test_imports_follow_the_flow(graph):
    assert violations(graph) == []


def test_scoring_path_imports_no_scikit_learn():
    sources = repo_sources()
    for mod in SKLEARN_FREE:
        assert mod in sources, f"{mod} is in SKLEARN_FREE but does not exist"
        assert heavy_at_import(mod, sources) == [], f"{mod} imports scikit-learn/SciPy/joblib"


def test_checker_flags_a_heavy_import_through_a_module():
    sources = {"model": ("", True),
               "model.a": ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import scipy\n"
                           "from model import b\ndef f():\n    import joblib\n", False),
               "model.b": ("try:\n    from sklearn.ensemble import IsolationForest\n"
                           "except ImportError:\n    pass\n", False)}
    assert heavy_at_import("model.a", sources) == [["model.a", "model.b", "sklearn.ensemble.IsolationForest"]]
    assert heavy_at_import("model.b", sources) != []


def test_stage_docstrings_name_the_stage():
    for init in sorted((REPO / "scheduler").glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc and init.parent.name in doc.lower(), f"{init}: docstring must name the stage"


# ---- the checker itself must be able to fail: synthetic packages with known faults

def _graph_of(**mods: str) -> dict[str, set[str]]:
    sources = {name.replace("__", "."): (src, False) for name, src in mods.items()}
    for pkg in {m.rpartition(".")[0] for m in sources} | {"scheduler"}:
        sources.setdefault(pkg, ("", True))
    return import_graph(sources)


def test_checker_flags_an_import_against_the_flow():
    g = _graph_of(scheduler__collect__tailer="from scheduler.detect import join\n",
                  scheduler__detect__join="import json\n")
    assert violations(g) == ["scheduler.collect.tailer -> scheduler.detect.join: scheduler.collect "
                             "(rank 0) imports scheduler.detect (rank 1), against the flow"]


def test_checker_flags_a_lazy_relative_cycle():
    g = _graph_of(scheduler__pipeline="def f():\n    from . import replay\n",
                  scheduler__replay="from .pipeline import f\n")
    assert violations(g) == []
    assert ["scheduler.pipeline", "scheduler.replay"] in cycles(g)


def test_checker_flags_forbidden_packages_and_the_lab():
    g = _graph_of(osquery_ext__tables="from model.records import ContainerInfo\n",
                  model__records="import dataclasses\n",
                  scheduler__emulate__runner="from scheduler.detect.join import Joiner\n",
                  scheduler__detect__join="from scheduler.emulate import runner\n")
    found = violations(g)
    assert any(v.startswith("osquery_ext.tables -> model.records") for v in found), found
    assert any(v.startswith("scheduler.emulate.runner -> scheduler.detect.join") for v in found), found
    assert any(v.startswith("scheduler.detect.join -> scheduler.emulate.runner") for v in found), found
