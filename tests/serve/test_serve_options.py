"""The Serve deployment's resources and autoscaling come from the serve config, all of it;
the proxy gets the body limit; Serve is reached only through raydprm.serve.app."""

import ast
import pathlib

from raydprm.config import Config


def test_deployment_options_come_from_the_serve_config():
    from raydprm.serve.app import deployment_options, max_body_bytes, proxy_environment

    cfg = Config().override(["serve.min_replicas=2", "serve.max_replicas=5", "serve.target_ongoing_requests=3",
                             "serve.upscale_delay_s=1.5", "serve.downscale_delay_s=30", "serve.num_cpus=0.25",
                             "serve.max_batch_size=4"]).serve
    opts = deployment_options(cfg)
    assert opts["ray_actor_options"] == {"num_cpus": 0.25}
    assert opts["autoscaling_config"] == {"min_replicas": 2, "initial_replicas": 2, "max_replicas": 5,
                                          "target_ongoing_requests": 3.0, "upscale_delay_s": 1.5,
                                          "downscale_delay_s": 30.0}
    # a replica admits more than the target, or the autoscaler could never see load above it
    assert opts["max_ongoing_requests"] >= 2 * cfg.target_ongoing_requests
    env = proxy_environment(cfg)
    assert env["RAYDPRM_SERVE_MAX_BODY_BYTES"] == str(max_body_bytes(cfg))
    from ray.serve.config import AutoscalingConfig

    AutoscalingConfig(**opts["autoscaling_config"])  # every key is one Serve knows


def test_ray_serve_is_imported_only_in_serve_app():
    root = pathlib.Path(__file__).resolve().parents[2] / "raydprm"
    users = []
    for f in root.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [f"{node.module}.{a.name}" for a in node.names] if isinstance(node, ast.ImportFrom) and node.module
                     else [])
            if any(n == "ray.serve" or n.startswith("ray.serve.") for n in names):
                users.append(str(f.relative_to(root)))
    assert sorted(set(users)) == ["serve/app.py"]
