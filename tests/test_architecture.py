"""The structure docs/architecture.md describes, checked on the source (AST only: nothing is imported, seconds).

- the import graph of ``components``, ``pipelines`` and ``serving`` has no cycle, counting imports inside functions
  (``if TYPE_CHECKING:`` blocks are not executed and do not count);
- each package imports only the packages the table in docs/architecture.md allows;
- the kfp wrappers and ``pipelines/`` import, at module level and transitively, only the standard library and kfp;
  no other module imports kfp;
- every DAG stage's ``core.py`` has its ``run_<stage>`` entry point taking its config section and a StageContext,
  and every wrapper is a few lines around it;
- no file is over 500 lines without a reason stated in its module docstring.
"""

from __future__ import annotations

import ast
import functools
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("components", "pipelines", "serving")
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    mods = {}
    for top in PACKAGES:
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return mods


MODULES = _modules()
TREES = {name: ast.parse(path.read_text(encoding="utf-8"), str(path)) for name, path in MODULES.items()}


def _type_checking_nodes(tree: ast.Module) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    return skip


def _imported_names(module: str, nodes) -> set[str]:
    """Dotted names imported by ``nodes`` (``from a import b`` yields ``a.b`` when ``a.b`` is a module, else ``a``)."""
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
            if node.level:  # relative: resolved against the importing module's package
                package = module.split(".")
                if MODULES[module].name != "__init__.py":
                    package = package[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module
            for alias in node.names:
                full = f"{base}.{alias.name}"
                names.add(full if full in MODULES else base)
    return names


def _project_module(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


@functools.cache
def _edges(module: str, *, top_level_only: bool = False) -> frozenset[str]:
    tree = TREES[module]
    if top_level_only:
        nodes = list(tree.body)
        nodes += [n for t in tree.body if isinstance(t, ast.Try) for n in t.body]
    else:
        skip = _type_checking_nodes(tree)
        nodes = [n for n in ast.walk(tree) if id(n) not in skip]
    return frozenset(_imported_names(module, nodes))


GRAPH = {m: {t for n in _edges(m) if (t := _project_module(n)) and t != m} for m in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_a_loop_hidden_in_a_function():
    """The test below can fail: a function-level import that closes a loop is a cycle."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
    tree = ast.parse("def f():\n    from components.evaluate.core import run_evaluate_clip\n")
    assert _imported_names("components.finetune_clip.core", ast.walk(tree)) == {"components.evaluate.core"}


def test_no_import_cycle_in_components_pipelines_and_serving():
    assert _cycles(GRAPH) == []


def _package(module: str) -> str:
    """``components.<stage>`` for a stage's modules, ``components.config``, else the top package."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "components" and len(parts) > 1 else parts[0]


#: The DAG's stages, in order (each a package components.<stage> with config.py, core.py and component.py).
STAGES = (
    "ingest",
    "frame_extraction",
    "face_tracking",
    "feedback",
    "finetune_clip",
    "finetune_lipsync",
    "evaluate",
    "ab_gate",
    "deploy",
    "monitor",
)
#: package -> the packages its modules may import (besides itself). components.common may import nothing else.
#: Mirrors the table in docs/architecture.md. The wrappers (component.py) may also import components.config.
ALLOWED = {
    "components.common": set(),
    "components.ingest": {"components.common"},
    "components.frame_extraction": {"components.common"},
    "components.face_tracking": {"components.common", "components.frame_extraction"},
    "components.finetune_clip": {"components.common", "components.frame_extraction"},
    "components.finetune_lipsync": {"components.common", "components.face_tracking"},
    "components.evaluate": {
        "components.common",
        "components.face_tracking",
        "components.finetune_clip",
        "components.finetune_lipsync",
    },
    "components.ab_gate": {"components.common"},
    "components.deploy": {"components.common", "components.ab_gate", "components.finetune_clip", "serving"},
    "components.demo_data": {"components.common"},
    "components.importer": {"components.common", "components.ingest"},
    "components.feedback": {"components.common", "serving"},
    "components.monitor": {
        "components.common",
        "components.evaluate",
        "components.feedback",
        "components.frame_extraction",
        "serving",
    },
    "components.start_run": {"components.common", "components.config"},
    "components.summary": {"components.common", "components.config", "components.start_run"},
    # the composition root: every stage's settings and serving's
    "components.config": {"components.common", "serving"} | {f"components.{s}" for s in STAGES},
    "serving": {
        "components.common",
        "components.config",
        "components.frame_extraction",
        "components.face_tracking",
        "components.finetune_clip",
        "components.finetune_lipsync",
    },
}


#: Modules that take a whole ClientConfig besides their package's allowance: the wrappers (task_inputs) and the
#: manifests renderer (a client's cluster manifests need its storage, serving and deploy sections), and the
#: fine-tunes' torchrun entries (``distributed.py``).
WHOLE_CONFIG = {
    *(f"components.{s}.component" for s in STAGES),
    "components.deploy.manifests",
    "components.finetune_clip.distributed",  # the torchrun entries: the wrapper's inputs, one process per rank
    "components.finetune_lipsync.distributed",
}


def test_each_package_imports_only_what_the_architecture_allows():
    unexpected = []
    for module, targets in sorted(GRAPH.items()):
        source = _package(module)
        if source in ("pipelines", "components"):
            continue  # the pipeline and the CLI compose every stage; components/__init__.py is empty
        allowed = ALLOWED[source] | {source}
        if module in WHOLE_CONFIG:
            allowed = allowed | {"components.config"}
        unexpected += [f"{module} -> {t}" for t in sorted(targets) if _package(t) not in allowed]
    assert unexpected == []


def _third_party_at_import(start: str) -> set[str]:
    """Top-level names of non-project, non-standard-library packages imported when ``start`` is imported."""
    seen: set[str] = set()
    third: set[str] = set()
    todo = [start]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        for name in _edges(module, top_level_only=True):
            if (target := _project_module(name)) is not None:
                todo += [target] + [p for p in _parents(target) if p in MODULES]
            elif name.split(".")[0] not in sys.stdlib_module_names:
                third.add(name.split(".")[0])
    return third


def _parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


WRAPPERS = sorted(m for m in MODULES if m.startswith("components.") and m.endswith(".component"))


@pytest.mark.parametrize("module", WRAPPERS + sorted(m for m in MODULES if m.startswith("pipelines")))
def test_wrappers_and_pipelines_import_only_stdlib_and_kfp_at_module_level(module):
    assert _third_party_at_import(module) <= {"kfp"}


#: Seconds each at import on the 2-core machine (mlflow 4.0, torch 2.7, transformers 2.2): a kfp task imports them
#: when its work needs them, never to load a stage's core.
HEAVY = {"torch", "mlflow", "transformers", "evidently", "mediapipe", "open_clip"}


@pytest.mark.parametrize("stage", STAGES)
def test_stage_cores_import_no_heavy_library_at_module_level(stage):
    """A kfp task is a process of its own: what its core imports at module level every task pays for."""
    assert _third_party_at_import(f"components.{stage}.core") & HEAVY == set()


def test_only_wrappers_and_pipelines_import_kfp():
    importers = sorted(m for m in MODULES if any(n.split(".")[0] == "kfp" for n in _edges(m)))
    assert [m for m in importers if m not in WRAPPERS and not m.startswith("pipelines")] == []


#: The entry points of each stage's core.py: run_<stage>, except evaluate (one task per model) and deploy (the
#: gate's two outcomes).
ENTRY_POINTS = {s: [f"run_{s}"] for s in STAGES} | {
    "evaluate": ["run_evaluate_clip", "run_evaluate_lipsync"],
    "deploy": ["run_deploy", "run_keep"],
}


def _function(module: str, name: str) -> ast.FunctionDef:
    found = [n for n in TREES[module].body if isinstance(n, ast.FunctionDef) and n.name == name]
    assert found, f"{module} has no function {name}"
    return found[0]


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_core_has_the_one_stage_shape(stage):
    """run_<stage>(inputs..., output location, its config section, ctx: StageContext); it opens its stage run."""
    core = f"components.{stage}.core"
    for name in ENTRY_POINTS[stage]:
        fn = _function(core, name)
        params = {a.arg: ast.unparse(a.annotation) if a.annotation else "" for a in fn.args.args + fn.args.kwonlyargs}
        assert params.get("ctx") == "StageContext", f"{name}: no ctx: StageContext parameter"
        if name != "run_keep":  # keep changes nothing: it has no settings
            assert any(re.fullmatch(r"\w+(Config|Policy)", a) for a in params.values()), f"{name}: no config section"
        assert "ctx.stage_run(" in ast.unparse(fn), f"{name} does not open its own stage run"
    wrappers = [n for n in TREES[f"components.{stage}.component"].body if isinstance(n, ast.FunctionDef)]
    assert wrappers
    for fn in wrappers:
        body = ast.unparse(fn)
        assert "task_inputs(" in body and "run_" in body, f"{fn.name}: not the wrapper shape"
        assert "stage_run(" not in body and "common import tracking" not in body, f"{fn.name} opens an MLflow run"
        statements = [s for s in fn.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
        assert len(statements) <= 10, f"{fn.name} is not a thin wrapper ({len(statements)} statements)"


def test_no_file_over_500_lines_without_a_reason_at_its_top():
    long_files = []
    for module, path in MODULES.items():
        if len(path.read_text(encoding="utf-8").splitlines()) > MAX_LINES:
            doc = ast.get_docstring(TREES[module]) or ""
            if "Why this file is long:" not in doc:
                long_files.append(str(path.relative_to(ROOT)))
    assert long_files == []


def test_the_architecture_document_lists_the_allowed_imports():
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    for package, allowed in ALLOWED.items():
        row = next((line for line in text.splitlines() if line.startswith(f"| `{package}` |")), None)
        assert row is not None, f"docs/architecture.md has no row for {package}"
        assert {m.strip("`") for m in re.findall(r"`[\w.]+`", row.split("|")[2])} == allowed, package


def test_only_the_kserve_adapter_imports_kserve():
    assert sorted(m for m in MODULES if any(n.split(".")[0] == "kserve" for n in _edges(m))) == [
        "serving.kserve_adapter"
    ]
