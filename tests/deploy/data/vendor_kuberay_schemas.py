"""Regenerate kuberay-<version>-schemas.json from a KubeRay checkout.

    python tests/deploy/data/vendor_kuberay_schemas.py /path/to/kuberay v1.7.0

Reads ray-operator/config/crd/bases/ray.io_{rayclusters,rayjobs,rayservices}.yaml at the
given git tag and keeps, of each CRD, only ``spec.versions[name=v1].schema.openAPIV3Schema``
minus what a manifest we write can never exercise, to keep the vendored file small:

- ``status`` (written by the operator, never by us) and every ``description``;
- the ``x-kubernetes-*`` markers except ``x-kubernetes-preserve-unknown-fields`` (the test
  reads it to know where unknown fields are allowed) and ``x-kubernetes-int-or-string``;
  CEL ``x-kubernetes-validations`` cannot be evaluated by jsonschema anyway.

Subtrees that occur more than once (the pod template in every group, the RayCluster spec
inside RayJob and RayService) are stored once under ``$defs`` and referenced with ``$ref``;
the result validates exactly what the pruned CRD schemas validate.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import yaml

CRDS = {"RayCluster": "rayclusters", "RayJob": "rayjobs", "RayService": "rayservices"}
KEEP_X = {"x-kubernetes-preserve-unknown-fields", "x-kubernetes-int-or-string"}
MIN_SHARED_CHARS = 400  # smaller repeats cost more as $refs than they save


def prune(node):
    if isinstance(node, dict):
        return {k: prune(v) for k, v in node.items()
                if k != "description" and not (k.startswith("x-kubernetes-") and k not in KEEP_X)}
    if isinstance(node, list):
        return [prune(v) for v in node]
    return node


def canon(node) -> str:
    return json.dumps(node, sort_keys=True, separators=(",", ":"))


def _walk(node, path, out):
    if isinstance(node, dict):
        if "$ref" not in node:
            out.append((node, path))
        for k, v in node.items():
            _walk(v, path + (k,), out)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _walk(v, path + (str(i),), out)


def _replace(node, key: str, ref: dict):
    if isinstance(node, dict):
        if canon(node) == key:
            return dict(ref)
        return {k: _replace(v, key, ref) for k, v in node.items()}
    if isinstance(node, list):
        return [_replace(v, key, ref) for v in node]
    return node


def factor(doc: dict) -> dict:
    """Move the largest repeated subtree to $defs until no repeat is worth a reference."""
    doc.setdefault("$defs", {})
    while True:
        defs = doc["$defs"]
        nodes: list = []
        _walk({k: v for k, v in doc.items()}, (), nodes)
        counts: dict[str, list] = {}
        for n, path in nodes:
            counts.setdefault(canon(n), []).append(path)
        best = max(((k, p) for k, p in counts.items() if len(p) > 1 and len(k) >= MIN_SHARED_CHARS),
                   key=lambda kp: len(kp[0]), default=None)
        if best is None:
            return doc
        key, paths = best
        named = [p for p in paths[0] if not p.isdigit() and p not in ("properties", "items", "$defs")]
        base = named[-1] if named else "shared"
        name = base if base not in defs else f"{base}_{hashlib.sha1(key.encode()).hexdigest()[:6]}"
        defs[name] = json.loads(key)
        ref = {"$ref": f"#/$defs/{name}"}
        for k in list(doc):
            doc[k] = _replace(doc[k], key, ref)
        # the def itself was replaced by a reference to itself above; put the body back
        doc["$defs"][name] = json.loads(key)


def main(repo: str, tag: str) -> Path:
    schemas = {}
    for kind, plural in CRDS.items():
        text = subprocess.run(["git", "-C", repo, "show", f"{tag}:ray-operator/config/crd/bases/ray.io_{plural}.yaml"],
                              check=True, capture_output=True, text=True).stdout
        crd = yaml.safe_load(text)
        (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        schema = prune(v1["schema"]["openAPIV3Schema"])
        schema["properties"].pop("status", None)
        schemas[kind] = schema
    doc = factor({"schemas": schemas})
    out = {"kuberay_version": tag, "source": "github.com/ray-project/kuberay ray-operator/config/crd/bases",
           "schemas": doc["schemas"], "$defs": doc["$defs"]}
    path = Path(__file__).with_name(f"kuberay-{tag}-schemas.json")
    path.write_text(json.dumps(out, sort_keys=True, indent=None, separators=(",", ":")) + "\n")
    return path


if __name__ == "__main__":
    p = main(*sys.argv[1:3])
    print(p, p.stat().st_size, "bytes")
