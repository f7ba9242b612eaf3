"""Fixtures shared by the cluster tests' modules."""

import pytest


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    """The uninterrupted tiny reference run of test_pipeline (its TINY sizes, in this process, every
    driver-side ray.get watched): ``(run_dir, report, received)``. Session-scoped, so the modules
    that compare against it (test_pipeline, test_pipeline_faults) pay for one run, not one each.
    Tests only read it or copy it (``_copy_before_ppo``); none writes into it."""
    import ray
    import test_pipeline

    from raydprm.cluster.pipeline import Pipeline
    from raydprm.cluster.run_plan import resolve_run_dir
    from raydprm.config import load_config

    out = tmp_path_factory.mktemp("runs")
    cfg = load_config(None, [*test_pipeline.TINY, f"run.output_dir={out}", "run.name=ref"])
    received = []
    real_get = ray.get

    def watched_get(refs, *a, **kw):
        res = real_get(refs, *a, **kw)
        received.append(test_pipeline._array_bytes(res))
        return res

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ray, "get", watched_get)
        report = Pipeline(cfg, resolve_run_dir(cfg), progress=False).fit()
    return out / "ref", report, received
