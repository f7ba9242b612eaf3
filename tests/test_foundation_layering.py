"""Import boundaries of DESIGN.md: core is pure math; ray/deepspeed/vllm stay in their adapters."""

import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "raydprm"
THIRD_PARTY_OK_IN_CORE = {"torch", "numpy"}
# Lazy imports inside one function each, never at import time (checked below): the fused
# kernel's triton, and POT's emd as the exact fallback for L > 10 (the issue allows it).
CORE_EXCEPTIONS = {"triton_sinkhorn.py": {"triton"}, "ot_loss.py": {"ot"}}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


def _modules(sub: str) -> list[Path]:
    return sorted((PKG / sub).rglob("*.py")) if (PKG / sub).exists() else []


def test_core_imports_only_torch_numpy_and_stdlib():
    bad = {}
    for f in _modules("core"):
        allowed = THIRD_PARTY_OK_IN_CORE | {"raydprm"} | CORE_EXCEPTIONS.get(f.name, set())
        extra = {m for m in _imports(f) if m not in sys.stdlib_module_names and m not in allowed}
        if extra:
            bad[f.name] = sorted(extra)
    assert not bad, f"raydprm.core must import torch/numpy only: {bad}"
    # and nothing inside core imports another raydprm layer
    for f in _modules("core"):
        tree = ast.parse(f.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("raydprm."):
                assert node.module.startswith("raydprm.core"), f"{f.name} imports {node.module}"


def test_importing_core_pulls_in_no_distributed_stack():
    code = ("import sys, raydprm.core; "
            "print(' '.join(m for m in ('ray', 'transformers', 'deepspeed', 'vllm', 'sqlite3', 'triton', 'ot')"
            " if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"raydprm.core imported: {out.stdout.strip()}"


def test_ray_only_in_ray_layers():
    ray_ok = {"cluster", "tune", "serve", "cli"}
    offenders = [str(f.relative_to(PKG)) for f in PKG.rglob("*.py")
                 if "ray" in _imports(f) and f.relative_to(PKG).parts[0] not in ray_ok]
    assert not offenders, f"only cluster/, tune/, serve/ (and CLI handlers) may import ray: {offenders}"


def test_deepspeed_and_vllm_each_in_one_adapter_module():
    for lib in ("deepspeed", "vllm"):
        users = [str(f.relative_to(PKG)) for f in PKG.rglob("*.py") if lib in _imports(f)]
        assert len(users) <= 1, f"{lib} must be imported by exactly one adapter module, found {users}"
