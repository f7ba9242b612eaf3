"""Import boundaries: the layer order of ``raydprm.layers`` holds for every import of every
module (lazy imports inside functions and relative imports included), there is no import
cycle between modules, core is pure math, and each third-party framework has one adapter.

The module graph is built from the source with ``ast`` (nothing is imported), so a lazy
``from raydprm.x import y`` inside a function body counts exactly like a top-level one.
Dynamic lookups by string (``importlib.import_module`` on a registry entry, e.g. the
rollout ``ENGINES`` and the CLI's ``COMMAND_MODULES``) are not import statements and are
not edges: they name their target in data, and the target imports the registry, not the
other way round.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from raydprm.layers import LAYERS, layer_of, rank_of

PKG = Path(__file__).resolve().parents[1] / "raydprm"
THIRD_PARTY_OK_IN_CORE = {"torch", "numpy"}
# Lazy imports inside one function each, never at import time (checked below): the fused
# kernel's triton, and POT's emd as the exact fallback for L > 10 (the issue allows it).
CORE_EXCEPTIONS = {"triton_sinkhorn.py": {"triton"}, "ot_loss.py": {"ot"}}

# The one module that starts or attaches to Ray (issue 10, part 2).
RAY_INIT_MODULE = "raydprm.cluster.runtime"

# Each third-party framework is imported by one adapter module of raydprm.
ADAPTERS_EXACTLY_ONE = {
    "deepspeed": "raydprm.train.ds_engine",
    "vllm": "raydprm.rollout.vllm_engine",
    "ray.serve": "raydprm.serve.app",
}
ADAPTERS_AT_MOST_ONE = ("ray.tune", "ray.train")


# --------------------------------------------------------------------------- the graph


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _all_modules() -> dict[str, Path]:
    return {_module_name(f): f for f in sorted(PKG.rglob("*.py"))}


MODULES = _all_modules()
TREES = {m: ast.parse(p.read_text(), filename=str(p)) for m, p in MODULES.items()}


def _package_of(module: str) -> str:
    """The package a relative import of ``module`` is resolved against."""
    return module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]


def _imported_names(module: str) -> set[str]:
    """Every dotted name an import statement of ``module`` may bind, anywhere in the file.

    ``import a.b`` gives ``a.b``; ``from a import b`` gives ``a`` and ``a.b`` (``b`` may be a
    submodule); relative imports are resolved against the module's package.
    """
    out: set[str] = set()
    for node in ast.walk(TREES[module]):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package_of(module).split(".")
                base = base[: len(base) - (node.level - 1)]
                src = ".".join(base + ([node.module] if node.module else []))
            else:
                src = node.module or ""
            out.add(src)
            out.update(f"{src}.{a.name}" for a in node.names if a.name != "*")
    return out


def _edges(module: str) -> set[str]:
    """The raydprm modules ``module`` imports: the named module itself, a submodule when
    ``from pkg import sub`` names one, else the package's ``__init__``."""
    targets: set[str] = set()
    for node in ast.walk(TREES[module]):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package_of(module).split(".")
                base = base[: len(base) - (node.level - 1)]
                src = ".".join(base + ([node.module] if node.module else []))
            else:
                src = node.module or ""
            names = [f"{src}.{a.name}" if f"{src}.{a.name}" in MODULES else src for a in node.names]
        else:
            continue
        targets.update(n for n in names if n == "raydprm" or n.startswith("raydprm."))
    targets.discard(module)
    return targets


def _graph() -> dict[str, set[str]]:
    return {m: _edges(m) for m in MODULES}


def _roots(module: str) -> set[str]:
    return {n.split(".")[0] for n in _imported_names(module)}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph) + 100))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out




# --------------------------------------------------------------------------- layers and cycles


def test_every_module_has_a_layer():
    homeless = sorted({layer_of(m) for m in MODULES} - {name for tier in LAYERS for name in tier})
    assert not homeless, f"packages with no place in raydprm.layers.LAYERS: {homeless}"


def test_layer_names_are_unique():
    names = [name for tier in LAYERS for name in tier]
    assert len(names) == len(set(names)), names


def test_every_raydprm_import_names_a_module_that_exists():
    missing = sorted((m, t) for m, ts in _graph().items() for t in ts if t not in MODULES)
    assert not missing, f"imports of raydprm modules that do not exist: {missing}"


def test_imports_only_point_down():
    """A module imports its own package or a lower tier, never a peer or a higher one."""
    bad = []
    for m, targets in _graph().items():
        lm = layer_of(m)
        for t in sorted(targets):
            lt = layer_of(t)
            if lt != lm and rank_of(lt) >= rank_of(lm):
                bad.append(f"{m} ({lm}) imports {t} ({lt})")
    assert not bad, "upward or sideways imports (see raydprm/layers.py):\n" + "\n".join(bad)


def test_no_import_cycles():
    cycles = _cycles(_graph())
    assert not cycles, f"import cycles between modules: {cycles}"


def test_the_checker_sees_lazy_relative_and_circular_imports(tmp_path):
    """The graph builder itself: a lazy relative import inside a function is an edge, and
    a two-module loop is a cycle."""
    tree = ast.parse("def f():\n    from ..models import dprm\n    from . import gae\n")
    global TREES, MODULES
    saved = TREES, MODULES
    try:
        MODULES = {**MODULES, "raydprm.core.fake": PKG / "core" / "fake.py"}
        TREES = {**TREES, "raydprm.core.fake": tree}
        edges = _edges("raydprm.core.fake")
    finally:
        TREES, MODULES = saved
    assert edges == {"raydprm.models.dprm", "raydprm.core.gae"}
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_nothing_imports_the_entry_points_outside_the_package():
    bad = {m: sorted(_roots(m) & {"jobs", "bench", "tests"}) for m in MODULES}
    bad = {m: v for m, v in bad.items() if v}
    assert not bad, f"raydprm modules importing jobs/, bench/ or tests/: {bad}"


# --------------------------------------------------------------------------- core is pure


def test_core_imports_only_torch_numpy_and_stdlib():
    bad = {}
    for m, f in MODULES.items():
        if layer_of(m) != "core":
            continue
        allowed = THIRD_PARTY_OK_IN_CORE | {"raydprm"} | CORE_EXCEPTIONS.get(f.name, set())
        extra = {r for r in _roots(m) if r and r not in sys.stdlib_module_names and r not in allowed}
        if extra:
            bad[f.name] = sorted(extra)
    assert not bad, f"raydprm.core must import torch/numpy only: {bad}"
    # and nothing inside core imports another raydprm layer
    for m in MODULES:
        if layer_of(m) == "core":
            others = {t for t in _graph()[m] if layer_of(t) != "core"}
            assert not others, f"{m} imports {sorted(others)}"


def test_importing_core_pulls_in_no_distributed_stack():
    code = ("import sys, raydprm.core; "
            "print(' '.join(m for m in ('ray', 'transformers', 'deepspeed', 'vllm', 'sqlite3', 'triton', 'ot')"
            " if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"raydprm.core imported: {out.stdout.strip()}"


# --------------------------------------------------------------------------- one adapter per framework


def _uses(module: str, lib: str) -> bool:
    return any(n == lib or n.startswith(lib + ".") for n in _imported_names(module))


def test_ray_only_in_ray_layers():
    ray_ok = {"cluster", "tune", "serve", "cli"}
    offenders = [m for m in MODULES if "ray" in _roots(m) and layer_of(m) not in ray_ok]
    assert not offenders, f"only cluster/, tune/, serve/ (and CLI handlers) may import ray: {offenders}"


def test_each_framework_has_exactly_one_adapter_module():
    found = {lib: sorted(m for m in MODULES if _uses(m, lib)) for lib in ADAPTERS_EXACTLY_ONE}
    want = {lib: [m] for lib, m in ADAPTERS_EXACTLY_ONE.items()}
    assert found == want, f"each framework must be imported by exactly its adapter module: {found}"


def test_ray_tune_and_ray_train_each_in_at_most_one_module():
    users = defaultdict(list)
    for lib in ADAPTERS_AT_MOST_ONE:
        users[lib] = sorted(m for m in MODULES if _uses(m, lib))
    too_many = {lib: ms for lib, ms in users.items() if len(ms) > 1}
    assert not too_many, f"one adapter module per framework: {too_many}"


def _calls_ray_init(module: str) -> bool:
    for node in ast.walk(TREES[module]):
        if isinstance(node, ast.ImportFrom) and node.module == "ray" and any(a.name == "init" for a in node.names):
            return True
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "init"
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "ray"):
            return True
    return False


def test_ray_init_only_in_the_runtime():
    callers = sorted(m for m in MODULES if _calls_ray_init(m))
    assert callers == [RAY_INIT_MODULE], f"only {RAY_INIT_MODULE} may call ray.init: {callers}"


# --------------------------------------------------------------------------- the docs of the layers (issue 25, part 8)

ROOT = PKG.parent


def test_layer_diagrams_in_the_docs_are_drawn_from_layers_py():
    """docs/architecture.md left out `evaluate` and grouped the tiers unlike layers.py: both docs now
    carry raydprm.layers.diagram() verbatim (regenerate it when LAYERS or LAYER_DOCS change)."""
    from raydprm.layers import diagram

    want = "```text\n" + diagram() + "\n```"
    for doc in ("docs/architecture.md", "docs/layers.md"):
        assert want in (ROOT / doc).read_text(), f"{doc}: paste raydprm.layers.diagram() into its ```text block"


def test_every_layer_is_described_and_what_the_descriptions_name_exists():
    import re

    from raydprm.layers import LAYER_DOCS

    assert set(LAYER_DOCS) == {name for tier in LAYERS for name in tier}
    for name, doc in LAYER_DOCS.items():
        for path in re.findall(r"\b([a-z_]+/[a-z_]+\.py)\b", doc):
            assert (PKG / path).is_file(), f"LAYER_DOCS[{name!r}] names {path}, which does not exist"
        assert "not written" not in doc
    # the config tree reads its label defaults where the docs say
    assert "raydprm.core.hh_labels" in _graph()["raydprm.config"]
    assert all((PKG / name).is_dir() or (PKG / f"{name}.py").is_file() for name in LAYER_DOCS if name)


def test_the_weight_sync_docs_name_the_digest_it_uses():
    """The docs said SHA-256 where weight sync checksums with xxh3-128 (rollout.sync.DIGEST_ALGO)."""
    from raydprm.rollout.sync import DIGEST_ALGO

    assert DIGEST_ALGO == "xxh3_128"
    import raydprm.cluster.weight_sync as ws
    import raydprm.rollout.sync as rs

    for where, text in (("docs/architecture.md", (ROOT / "docs/architecture.md").read_text()),
                        ("cluster/weight_sync.py", ws.__doc__), ("rollout/sync.py", rs.__doc__)):
        assert "xxh3-128" in text, where
        assert "SHA-256 digests" not in text and "SHA-256 of its bytes" not in text, where
        assert "(names, shapes, SHA-256)" not in text, where
