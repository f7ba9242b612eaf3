"""run.loggers (issue 25, part 7): a run logged to MLflow's file store reads back, through MLflow's own
client, the resolved config as params and every metric under the names TensorBoard shows."""

import math
import types

import pytest

from raydprm.cluster.tracking import Trackers, check_installed, flatten_params, open_trackers
from raydprm.config import load_config
from raydprm.errors import ConfigError

mlflow = pytest.importorskip("mlflow")  # in the dev extra (the bootstrap installs it)
from mlflow.tracking import MlflowClient  # noqa: E402

STEPS = [{"reward/mean": 0.1 * s, "ppo/clipfrac": 0.01 * s, "population/expected_reward": -0.9 + 0.01 * s,
          "time/update_s": 1.5, "ppo/approx_kl": float("nan") if s == 2 else 0.001} for s in (1, 2, 3)]


def _tb_scalars(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _client(cfg):
    from raydprm.cluster.tracking import mlflow_uri

    return MlflowClient(tracking_uri=mlflow_uri(cfg.run))


def test_a_pipeline_run_logged_to_mlflow_reads_back_its_params_and_metrics_as_tensorboard_names_them(tmp_path):
    from raydprm.cluster.pipeline import Pipeline

    cfg = load_config(None, [f"run.output_dir={tmp_path}", "run.name=r", "ppo.beta=0.07",
                             "run.loggers=[tensorboard,mlflow]"])
    pipe = Pipeline(cfg, tmp_path / "r", progress=False)
    tb = pipe.metrics_log(pipe.arm)  # what the training-stage loop opens
    for s, rec in enumerate(STEPS, start=1):
        tb.log({"step": s, **rec}, s)  # as the loop does: the step record
    tb.close()

    client = _client(cfg)
    exp = client.get_experiment_by_name("raydprm")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "r"
    assert run.data.tags["raydprm.run_dir"] == str(tmp_path / "r")
    params = run.data.params
    assert params["ppo.beta"] == "0.07" and params["run.loggers"] == '["tensorboard", "mlflow"]'
    assert set(params) == set(flatten_params(cfg.to_dict()))  # the whole resolved config
    tb_scalars = _tb_scalars(tmp_path / "r" / "tb")
    assert set(run.data.metrics) == set(tb_scalars) == set(STEPS[0])  # one vocabulary of names
    for name in STEPS[0]:
        got = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, name))
        want = [(s, r[name]) for s, r in enumerate(STEPS, start=1) if math.isfinite(r[name])]  # NaN: not logged
        tb_got = [(s, v) for s, v in tb_scalars[name] if math.isfinite(v)]
        for a, b in ((got, want), (tb_got, want)):
            assert [s for s, _ in a] == [s for s, _ in b] and [v for _, v in a] == pytest.approx([v for _, v in b])


def test_a_comparison_logs_one_run_per_policy_and_seed_and_a_tracking_uri_is_used_as_given(tmp_path):
    cfg = load_config(None, [f"run.output_dir={tmp_path}", "run.name=cmp", "run.loggers=[mlflow]",
                             f"run.tracking_uri={(tmp_path / 'elsewhere').as_uri()}", "run.experiment=paper"])
    for prefix in ("bt/seed0/", "dprm_ot/seed0/"):
        with open_trackers(cfg.run, tmp_path / "cmp", prefix, params={"policy": prefix}) as t:
            t.log_metrics({"reward/mean": 1.0}, 1)
    client = MlflowClient(tracking_uri=(tmp_path / "elsewhere").as_uri())
    runs = client.search_runs([client.get_experiment_by_name("paper").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["cmp/bt/seed0", "cmp/dprm_ot/seed0"]
    assert sorted(r.data.tags["raydprm.policy"] for r in runs) == ["bt/seed0", "dprm_ot/seed0"]
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "cmp" / "tb").exists()  # only what was named


def test_a_sweep_logs_each_trial_once_through_tunes_callback(tmp_path):
    from raydprm.tune.sweep import TrackingCallback

    base = load_config(None, [f"run.output_dir={tmp_path / 'runs'}", "run.loggers=[tensorboard,mlflow]"])

    def config_of(labels, tid):
        return base.override([f"ppo.beta={labels['ppo.beta']}", f"run.name={tid}"])

    cb = TrackingCallback(config_of, tmp_path / "runs", ("mlflow",))
    trials = [types.SimpleNamespace(trial_id=f"t{i}", config={"ppo.beta": b}) for i, b in enumerate((0.05, 0.2))]
    for t in trials:
        cb.on_trial_start(0, trials, t)
        cb.on_trial_start(0, trials, t)  # a trial restored by PBT stays one run
    for step in (1, 2):
        for t in trials:
            cb.on_trial_result(0, trials, t, {"step": step, "reward/mean": step * t.config["ppo.beta"],
                                              "training_iteration": step, "trial_id": t.trial_id, "done": False})
    cb.on_trial_complete(0, trials, trials[0])
    cb.on_trial_error(0, trials, trials[1])
    client = _client(base)
    runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("raydprm").experiment_id])}
    assert sorted(runs) == ["t0", "t1"] and runs["t1"].data.params["ppo.beta"] == "0.2"
    hist = client.get_metric_history(runs["t1"].info.run_id, "reward/mean")
    assert sorted((m.step, m.value) for m in hist) == [(1, 0.2), (2, 0.4)]
    assert set(runs["t0"].data.metrics) == {"reward/mean"}  # Tune's own bookkeeping is not a metric


def test_loggers_are_validated_and_a_missing_extra_is_named_before_any_work(monkeypatch, caplog):
    with pytest.raises(ConfigError, match="'run.loggers' has 'neptune'; known loggers: tensorboard, mlflow, wandb"):
        load_config(None, ["run.loggers=[neptune]"])
    with pytest.raises(ConfigError, match="names a logger twice"):
        load_config(None, ["run.loggers=[mlflow,mlflow]"])
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"names 'wandb', but the wandb package is not installed: pip install "
                                          r"'raydprm\[tracking\]'"):
        check_installed(("tensorboard", "wandb"))

    class Broken:
        def log_metrics(self, metrics, step):
            raise ConnectionError("tracking server down")

        def close(self):
            pass

    seen = []

    class Ok:
        def log_metrics(self, metrics, step):
            seen.append(step)

        def close(self):
            pass

    t = Trackers([("mlflow", Broken()), ("tensorboard", Ok())])
    t.log_metrics({"a/b": 1.0}, 1)
    t.log_metrics({"a/b": 1.0}, 2)  # a tracker that failed is dropped; training goes on
    assert seen == [1, 2] and [n for n, _ in t.trackers] == ["tensorboard"]
    assert "mlflow failed to log_metrics (ConnectionError: tracking server down)" in caplog.text
