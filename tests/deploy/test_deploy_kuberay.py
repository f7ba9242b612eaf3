"""The KubeRay manifests (clusters/kuberay/) against KubeRay's own CRD schemas.

The schemas are the v1 ``openAPIV3Schema`` of KubeRay's RayCluster, RayJob and RayService
CRDs, vendored in data/kuberay-<version>-schemas.json (descriptions pruned, repeats shared;
data/vendor_kuberay_schemas.py regenerates it). Validation is strict the way ``kubectl apply``
(server-side field validation) is: a field the schema does not declare is an error, except
under ``x-kubernetes-preserve-unknown-fields``.
"""

from __future__ import annotations

import copy
import importlib
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBERAY = ROOT / "clusters" / "kuberay"
SCHEMAS = json.loads(next((Path(__file__).parent / "data").glob("kuberay-v*-schemas.json")).read_text())
MOUNT = "/mnt/raydprm"
GPU_ROLES = ("generator", "learner", "reward")


def _strict(node):
    """Close every object that declares its properties (as kubectl's strict validation does)."""
    if isinstance(node, dict):
        out = {k: _strict(v) for k, v in node.items()}
        if ("properties" in node and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node


STRICT = {kind: dict(_strict(s), **{"$defs": _strict(SCHEMAS["$defs"])}) for kind, s in SCHEMAS["schemas"].items()}


def validate(doc: dict) -> None:
    assert doc["apiVersion"] == "ray.io/v1", doc["apiVersion"]
    jsonschema.Draft202012Validator(STRICT[doc["kind"]]).validate(doc)


def _doc(name: str) -> dict:
    (doc,) = list(yaml.safe_load_all((KUBERAY / name).read_text()))
    return doc


def _cluster_specs():
    yield "raycluster.yaml", _doc("raycluster.yaml")["spec"]
    yield "rayjob.yaml", _doc("rayjob.yaml")["spec"]["rayClusterSpec"]
    yield "rayservice.yaml", _doc("rayservice.yaml")["spec"]["rayClusterConfig"]


def _pods(spec):
    yield spec["headGroupSpec"]["template"]["spec"]
    for g in spec["workerGroupSpecs"]:
        yield g["template"]["spec"]


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob.yaml", "rayservice.yaml"])
def test_kuberay_manifest_validates_against_the_crd_schema(name):
    validate(_doc(name))


def test_kuberay_validation_rejects_a_misspelt_field():
    # the check has teeth: a typo a real apply would refuse is refused here too
    doc = _doc("raycluster.yaml")
    bad = copy.deepcopy(doc)
    bad["spec"]["workerGroupSpecs"][0]["minReplica"] = 0
    with pytest.raises(jsonschema.ValidationError, match="minReplica"):
        validate(bad)
    bad = copy.deepcopy(doc)
    bad["spec"]["workerGroupSpecs"][1]["template"]["spec"]["containers"][0]["resource"] = {}
    with pytest.raises(jsonschema.ValidationError, match="resource"):
        validate(bad)
    bad = copy.deepcopy(doc)
    bad["spec"]["workerGroupSpecs"][0]["maxReplicas"] = "4"  # must be an integer
    with pytest.raises(jsonschema.ValidationError):
        validate(bad)


def test_kuberay_raycluster_autoscales_gpu_groups_from_zero():
    spec = _doc("raycluster.yaml")["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    for g in groups.values():
        assert g["minReplicas"] == 0 and g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
    for role in GPU_ROLES:
        (c,) = groups[role]["template"]["spec"]["containers"]
        gpus = int(c["resources"]["limits"]["nvidia.com/gpu"])
        assert gpus >= 1 and c["resources"]["requests"]["nvidia.com/gpu"] == c["resources"]["limits"]["nvidia.com/gpu"]
        assert groups[role]["labels"]["raydprm.io/role"] == role
    assert int(groups["learner"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]) > 1
    assert "nvidia.com/gpu" not in groups["cpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]


@pytest.mark.parametrize("name,spec", list(_cluster_specs()), ids=lambda x: x if isinstance(x, str) else "")
def test_kuberay_every_pod_runs_the_raydprm_image_with_token_auth_and_the_output_volume(name, spec):
    project = (ROOT / "pyproject.toml").read_text()
    version = project.split('version = "', 1)[1].split('"', 1)[0]
    assert spec["rayVersion"] == "2.60.0"
    assert spec["authOptions"] == {"mode": "token", "secretName": "raydprm-ray-token"}
    claim = _doc("pvc.yaml")["metadata"]["name"]
    for pod in _pods(spec):
        (c,) = pod["containers"]
        assert c["image"] == f"raydprm:{version}"
        vols = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        assert vols[mounts[MOUNT]]["persistentVolumeClaim"]["claimName"] == claim


def test_kuberay_pvc_is_shared_between_pods():
    pvc = _doc("pvc.yaml")
    assert pvc["kind"] == "PersistentVolumeClaim" and pvc["spec"]["accessModes"] == ["ReadWriteMany"]


def test_kuberay_rayjob_runs_the_same_cluster_and_writes_to_the_volume():
    job = _doc("rayjob.yaml")["spec"]
    assert job["rayClusterSpec"] == _doc("raycluster.yaml")["spec"]  # one cluster definition, two files
    assert job["shutdownAfterJobFinishes"] is True
    argv = job["entrypoint"].split()
    assert argv[0] == "python" and argv[1] in ("/home/ray/raydprm/jobs/run.py", "/home/ray/raydprm/jobs/sweep.py")
    overrides = dict(a.split("=", 1) for a in argv[2:])
    assert overrides["run.output_dir"].startswith(MOUNT + "/")
    script = ROOT / argv[1].removeprefix("/home/ray/raydprm/")
    if not script.is_file():
        pytest.skip(f"{script.relative_to(ROOT)} is not in this checkout yet (added with the pipeline)")


def test_kuberay_rayservice_builds_from_the_model_the_rayjob_writes():
    from raydprm.serve.builder import resolve_builder_args

    svc = _doc("rayservice.yaml")["spec"]
    (app,) = yaml.safe_load(svc["serveConfigV2"])["applications"]
    module, attr = app["import_path"].split(":")
    assert callable(getattr(importlib.import_module(module), attr))
    _, cfg, model_dir = resolve_builder_args(app["args"])  # the dict Serve passes; raises if malformed
    argv = _doc("rayjob.yaml")["spec"]["entrypoint"].split()
    job = dict(a.split("=", 1) for a in argv[2:])
    assert model_dir == f"{job['run.output_dir']}/{job['run.name']}/reward/best"
    assert cfg.serve.min_replicas >= 1
    # the /votes token comes from a Secret in the environment, not from the manifest
    assert "auth_token" not in svc["serveConfigV2"]
    for pod in _pods(svc["rayClusterConfig"]):
        env = {e["name"]: e for e in pod["containers"][0].get("env", [])}
        assert env["RAYDPRM_SERVE_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "raydprm-serve-token"


def test_kuberay_vendored_schema_names_its_version_and_is_a_valid_schema():
    assert SCHEMAS["kuberay_version"].startswith("v1.")
    assert set(SCHEMAS["schemas"]) == {"RayCluster", "RayJob", "RayService"}
    for schema in STRICT.values():
        jsonschema.Draft202012Validator.check_schema(schema)
