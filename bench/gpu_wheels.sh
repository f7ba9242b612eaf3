#!/usr/bin/env bash
# The wheels the GPU check needs that a bare GPU image (Python 3.12, torch, triton,
# transformers; no ray, vllm or deepspeed) lacks: DeepSpeed and the requirements of it that
# such an image does not already have, plus xxhash (the weight-sync digest), for CPython 3.12
# on Linux x86_64. Carry the folder to the GPU node and install with
#
#     pip install --no-deps wheels/*.whl
#
# Usage: bench/gpu_wheels.sh [DIR]   (default: wheels/, ignored by git). Needs pip and PyPI.
# The versions are the ones this repository's tests run with (deepspeed pinned in pyproject.toml).
set -euo pipefail

DIR="${1:-wheels}"
PY="${PYTHON:-python3}"
LIMIT_MIB=64

# binary wheels, downloaded for the target (not this machine): cp312, manylinux x86_64
BINARY=(
  einops==0.8.2 hjson==3.1.0 msgpack==1.2.4 ninja==1.13.2 psutil==7.2.2 py-cpuinfo==9.0.0
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  xxhash==4.1.0
)
DEEPSPEED=deepspeed==0.19.8  # published as a source archive only: built here into a pure-Python wheel

mkdir -p "$DIR"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --dest "$DIR" \
  --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 --platform any \
  "${BINARY[@]}"

if ! ls "$DIR"/deepspeed-*.whl >/dev/null 2>&1; then
  # DS_BUILD_OPS=0: no CUDA/C++ op is compiled (the check uses torch's AdamW, no JIT op);
  # the wheel is py3-none-any and installs on the GPU image whatever its torch.
  DS_BUILD_OPS=0 "$PY" -m pip wheel --quiet --no-deps --wheel-dir "$DIR" "$DEEPSPEED"
fi
rm -f "$DIR"/*.tar.gz "$DIR"/*.zip

total=$(du -cb "$DIR"/*.whl | tail -1 | cut -f1)
ls -1 "$DIR"/*.whl | sed 's|.*/|  |'
printf 'wheels in %s: %d files, %.1f MiB (limit %d MiB)\n' "$DIR" "$(ls "$DIR"/*.whl | wc -l)" \
  "$(echo "$total / 1048576" | bc -l)" "$LIMIT_MIB"
if [ "$total" -gt $((LIMIT_MIB * 1048576)) ]; then
  echo "error: the wheels exceed ${LIMIT_MIB} MiB" >&2
  exit 1
fi
