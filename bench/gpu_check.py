"""The GPU acceptance check (issue 23): does raydprm work on this GPU node, and how fast?

    python bench/gpu_check.py --quick          # about 3 minutes on one H100
    python bench/gpu_check.py                  # full sizes, about 8 minutes
    python bench/gpu_check.py --cpu-dry-run    # tiny sizes on the CPU (what CI runs)

Runs from a plain checkout: raydprm need not be installed, only torch, triton and
transformers (plus deepspeed and its requirements from `bench/gpu_wheels.sh`:
`pip install --no-deps wheels/*.whl`). Writes DIR/gpu_check.json and DIR/gpu_check.md
(--out DIR, default ./gpu_check). Each check runs in its own process under a time budget;
see `raydprm/doctor/checks.py` for what each measures and its tolerances, and docs/gpu.md.
Same as `raydprm doctor --gpu`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, installed or not

from raydprm.doctor.report import add_arguments, command_line, run  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(p)
    args = p.parse_args(argv)
    return run(args, command_line(["python", "bench/gpu_check.py"], args))


if __name__ == "__main__":
    sys.exit(main())
