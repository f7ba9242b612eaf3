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


# ---------------------------------------------------------------- how a tracker run ends (FINISHED/FAILED/KILLED)

def _status(client, name, experiment="raydprm"):
    runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name(experiment).experiment_id])}
    return runs[name].info.status


@pytest.fixture
def no_signal_yet(monkeypatch):
    import raydprm.errors as errors

    monkeypatch.setattr(errors, "_received", [])  # what the CLI's handlers remember: nothing received yet
    return errors


def test_a_tracker_run_ends_finished_failed_or_killed_as_the_training_did(tmp_path, no_signal_yet):
    import signal

    from raydprm.errors import Terminated

    cfg = load_config(None, [f"run.output_dir={tmp_path}", "run.loggers=[mlflow]"])
    ends = {"ok": None, "crash": ValueError("a bug in a step"), "sigterm": Terminated(signal.SIGTERM),
            "sigint": KeyboardInterrupt()}
    for name, exc in ends.items():
        with pytest.raises(type(exc)) if exc is not None else open(__file__):
            with open_trackers(replace_run(cfg, name), tmp_path / name) as t:
                t.log_metrics({"reward/mean": 1.0}, 1)
                if exc is not None:
                    raise exc
    no_signal_yet.note_signal(signal.SIGTERM)  # a Ray wait turned the signal into SystemExit(1)
    with pytest.raises(SystemExit), open_trackers(replace_run(cfg, "in_a_ray_wait"), tmp_path / "w"):
        raise SystemExit(1)
    client = _client(cfg)
    assert {n: _status(client, n) for n in (*ends, "in_a_ray_wait")} == {
        "ok": "FINISHED", "crash": "FAILED", "sigterm": "KILLED", "sigint": "KILLED", "in_a_ray_wait": "KILLED"}


def replace_run(cfg, name):
    from dataclasses import replace

    return replace(cfg.run, name=name)


@pytest.mark.parametrize("end", ["crash", "sigterm", "sigint"])
def test_a_pipeline_run_that_dies_mid_stage_ends_its_mlflow_run_failed_or_killed(tmp_path, monkeypatch, end,
                                                                                   no_signal_yet):
    """The training-stage loop opens the trackers and dies at its second step; Pipeline.fit ends what
    is still open (before: the run stayed RUNNING). Ray is not started: the stages around are stubbed."""
    import signal

    import raydprm.cluster.pipeline as pl
    from raydprm.errors import Terminated

    exc = {"crash": RuntimeError("generator died"), "sigterm": Terminated(signal.SIGTERM),
           "sigint": KeyboardInterrupt()}[end]

    def one_step(step):
        if step == 1:
            raise exc
        return {"reward/mean": 0.5, "ppo/clipfrac": 0.1}

    monkeypatch.setattr(pl, "connect", lambda *a, **kw: types.SimpleNamespace(close=lambda: None))
    monkeypatch.setattr(pl.Pipeline, "_sft", lambda self: {"path": "sft", "digest": "s"})
    monkeypatch.setattr(pl.Pipeline, "_collect", lambda self, d: {"data": "data", "digest": "c"})
    monkeypatch.setattr(pl.Pipeline, "_reward", lambda self, arm, d: {"best_dir": "rw", "digest": "r"})
    monkeypatch.setattr(pl.Pipeline, "_ppo", lambda self, arm, key, *a: self._train_stage(
        arm, key, 3, one_step, lambda r: {}))
    cfg = load_config(None, [f"run.output_dir={tmp_path}", "run.name=r", "run.loggers=[tensorboard,mlflow]",
                             "pipeline.checkpoint_every=100"])
    with pytest.raises(type(exc)):
        pl.Pipeline(cfg, tmp_path / "r", progress=False).fit()
    client = _client(cfg)
    (run,) = client.search_runs([client.get_experiment_by_name("raydprm").experiment_id])
    assert run.info.status == {"crash": "FAILED", "sigterm": "KILLED", "sigint": "KILLED"}[end]
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "reward/mean")] == [(1, 0.5)]


def test_a_sweeps_trial_runs_end_by_how_each_trial_ended(tmp_path, no_signal_yet):
    import signal

    from raydprm.cluster.tracking import end_open_trackers
    from raydprm.errors import Terminated
    from raydprm.tune.sweep import TrackingCallback

    base = load_config(None, [f"run.output_dir={tmp_path / 'runs'}", "run.loggers=[mlflow]"])
    cb = TrackingCallback(lambda labels, tid: base.override([f"run.name={tid}"]), tmp_path / "runs", ("mlflow",))
    trials = [types.SimpleNamespace(trial_id=f"t{i}", config={}, status="RUNNING") for i in range(5)]
    for t in trials:
        cb.on_trial_start(0, trials, t)
    cb.on_trial_complete(0, trials, trials[0])  # done, or stopped early by the scheduler
    cb.on_trial_error(0, trials, trials[1])
    trials[2].status = "PAUSED"  # a SIGINT: Tune checkpoints, then ends the experiment with trials unfinished
    trials[3].status = "TERMINATED"
    cb.on_experiment_end(trials[:4])
    assert set(cb.open) == {"t4"}  # not among the trials Tune ended with
    assert end_open_trackers(Terminated(signal.SIGTERM)) == 1  # SIGTERM skips Tune's clean-up: the sweep ends t4
    client = _client(base)
    assert {t.trial_id: _status(client, t.trial_id) for t in trials} == {
        "t0": "FINISHED", "t1": "FAILED", "t2": "KILLED", "t3": "FINISHED", "t4": "KILLED"}


# ---------------------------------------------------------------- W&B, offline (a stand-in when wandb is absent)

class _FakeWandb(types.ModuleType):
    """Records what the adapter asks of ``wandb``: init's mode/dir/name/project, the config it is
    given (init's ``config`` or ``run.config.update``), every log(metrics, step) and finish(exit_code)."""

    def __init__(self):
        import importlib.machinery

        super().__init__("wandb")
        self.__spec__ = importlib.machinery.ModuleSpec("wandb", None)  # find_spec (check_installed) sees it
        self.runs = []

    def init(self, **kw):
        fake = self

        class Config(dict):
            def update(self, d, allow_val_change=False):
                dict.update(self, d)

        class Run:
            def __init__(self):
                self.init, self.config, self.logged, self.exit_codes = kw, Config(kw.get("config") or {}), [], []
                fake.runs.append(self)

            def log(self, metrics, step=None):
                self.logged.append((step, dict(metrics)))

            def finish(self, exit_code=None):
                self.exit_codes.append(exit_code)

        return Run()


def test_wandb_logs_offline_the_config_as_params_and_tensorboards_metric_names(tmp_path, monkeypatch, no_signal_yet):
    import sys

    from raydprm.cluster.pipeline import Pipeline

    fake = _FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    cfg = load_config(None, [f"run.output_dir={tmp_path}", "run.name=r", "ppo.beta=0.07",
                             "run.loggers=[tensorboard,wandb]", "run.experiment=paper"])
    check_installed(cfg.run.loggers)  # the stand-in counts as installed
    pipe = Pipeline(cfg, tmp_path / "r", progress=False)
    log = pipe.metrics_log(pipe.arm)
    for s, rec in enumerate(STEPS, start=1):
        log.log({"step": s, **rec}, s)
    log.close()
    (run,) = fake.runs
    assert run.init["mode"] == "offline" and run.init["dir"] == str(tmp_path / "r" / "wandb")
    assert run.init["name"] == "r" and run.init["project"] == "paper"
    assert dict(run.config) == flatten_params(cfg.to_dict()) and run.config["ppo.beta"] == "0.07"
    tb = _tb_scalars(tmp_path / "r" / "tb")
    assert [s for s, _ in run.logged] == [1, 2, 3]
    assert set().union(*(m for _, m in run.logged)) == set(tb) == set(STEPS[0])  # TensorBoard's names
    for s, m in run.logged:
        want = {k: v for k, v in STEPS[s - 1].items() if math.isfinite(v)}  # a NaN is not logged
        assert m == pytest.approx(want) and all((s, pytest.approx(v)) in tb[k] for k, v in want.items())
    assert run.exit_codes == [0]

    import signal

    from raydprm.errors import Terminated

    for exc, code in ((ValueError("boom"), 1), (Terminated(signal.SIGTERM), 143)):
        with pytest.raises(type(exc)), open_trackers(cfg.run, tmp_path / "x", params={"a": 1}):
            no_signal_yet._received[:] = [signal.SIGTERM] if code == 143 else []
            raise exc
        assert fake.runs[-1].exit_codes == [code]  # W&B marks a non-zero exit failed


def test_wandb_for_real_writes_an_offline_run(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")  # the optional 'tracking' extra
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = load_config(None, [f"run.output_dir={tmp_path}", "run.name=r", "run.loggers=[wandb]"])
    with open_trackers(cfg.run, tmp_path / "r", params={"ppo": {"beta": 0.07}}) as t:
        t.log_metrics({"reward/mean": 0.5}, 1)
    runs = list((tmp_path / "r" / "wandb").glob("wandb/offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb")), wandb.__version__
