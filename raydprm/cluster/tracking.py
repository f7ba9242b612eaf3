"""Experiment tracking: where a run's params and metrics go (``run.loggers``).

One interface for every tracker, :class:`Tracker` (``log_params``, ``log_metrics`` at a step,
``close``), and :func:`open_trackers`, which fans one call out to each logger named in
``run.loggers``:

==============  ===================================================================
``tensorboard``  ``<run_dir>/tb/<prefix>`` (the default); params as one text entry
``mlflow``       a run in experiment ``run.experiment`` at ``run.tracking_uri`` (empty:
                 a file store at ``<run.output_dir>/mlruns``, which MLflow 3 keeps in
                 maintenance mode: ``MLFLOW_ALLOW_FILE_STORE=true`` is set for file URIs);
                 tags ``raydprm.run_dir``, ``raydprm.policy``; MLflow's client only
                 (``mlflow-skinny``)
``wandb``        offline mode under ``<run_dir>/wandb`` (``wandb sync`` uploads it later)
==============  ===================================================================

A tracker run ends with how the training ended (:func:`end_status`): ``FINISHED`` when it closes
normally, ``FAILED`` when an exception ended it, ``KILLED`` on SIGTERM/SIGINT (W&B: exit code 0, 1,
128 + the signal). :class:`Trackers` is a context manager that does so; the pipeline ends every
tracker still open when a run dies (:func:`end_open_trackers`), and a sweep's Tune callback ends each
trial's run by the trial's end. Only a ``kill -9`` leaves a run ``RUNNING``.

Params are the resolved config, flattened to dotted keys (``ppo.beta``); metrics keep the
names TensorBoard shows (``reward/mean``, ``ppo/clipfrac``, ``population/expected_reward``).
A run, each policy and seed of a comparison (``prefix`` = ``<name>/seed<k>/``), and each
trial of a sweep (its pipeline, run by Tune) log through here; MLflow and W&B are optional
extras (``pip install 'raydprm[tracking]'``), imported only when named. This module is the
one place that imports them.
"""

from __future__ import annotations

import json
import logging
import math
import os
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from raydprm.errors import ConfigError

__all__ = ["Tracker", "Trackers", "TensorBoardTracker", "MLflowTracker", "WandbTracker", "open_trackers",
           "flatten_params", "LOGGERS", "mlflow_uri", "allow_file_store", "check_installed", "end_status",
           "end_open_trackers", "STATUSES"]

log = logging.getLogger(__name__)

LOGGERS = ("tensorboard", "mlflow", "wandb")
_MODULES = {"mlflow": "mlflow", "wandb": "wandb"}  # the import each logger needs (tensorboard: torch's)


STATUSES = ("FINISHED", "FAILED", "KILLED")  # how a tracker run ends (MLflow's RunStatus names)


class Tracker(Protocol):
    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...

    def close(self, status: str = "FINISHED") -> None: ...


def end_status(exc: BaseException | None) -> str:
    """How a training that ``exc`` ended ended: ``FINISHED`` (no exception), ``KILLED`` (SIGTERM or
    SIGINT, including a signal that a Ray wait turned into ``SystemExit``), else ``FAILED``."""
    from raydprm.errors import Terminated, received_signal

    if exc is None or (isinstance(exc, SystemExit) and not isinstance(exc, Terminated) and exc.code in (0, None)
                       and received_signal() is None):
        return "FINISHED"
    if isinstance(exc, (KeyboardInterrupt, Terminated)) or received_signal() is not None:
        return "KILLED"
    return "FAILED"


def _exit_code(status: str) -> int:
    """A W&B exit code for a status: 0, 1, or 128 + the signal received (130 when none is known)."""
    from raydprm.errors import received_signal

    if status == "FINISHED":
        return 0
    if status == "FAILED":
        return 1
    sig = received_signal()
    return 128 + (sig if sig is not None else 2)


def flatten_params(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"ppo": {"beta": 0.1}}`` -> ``{"ppo.beta": "0.1"}`` (lists as JSON, secrets already masked by
    ``Config.to_dict``)."""
    out: dict[str, str] = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten_params(v, key + "."))
        else:
            out[key] = v if isinstance(v, str) else json.dumps(v, default=str)
    return out


def _finite(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(float(v))}


class TensorBoardTracker:
    """:class:`~raydprm.cluster.step_log.TensorBoardLog` (the pipeline's own scalars) plus the params."""

    def __init__(self, log_dir: str | os.PathLike[str]) -> None:
        from raydprm.cluster.step_log import TensorBoardLog

        self.tb = TensorBoardLog(Path(log_dir))

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.tb.writer.add_text("config", "\n".join(f"    {k} = {v}" for k, v in sorted(params.items())))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.tb.log(dict(metrics), step)

    def close(self, status: str = "FINISHED") -> None:
        self.tb.close()  # an event file has no run status


def mlflow_uri(run_cfg: Any) -> str:
    """``run.tracking_uri``, or the file store at ``<run.output_dir>/mlruns``."""
    return run_cfg.tracking_uri or (Path(run_cfg.output_dir).resolve() / "mlruns").as_uri()


def allow_file_store(uri: str) -> None:
    """MLflow 3 refuses its file store (maintenance mode) unless ``MLFLOW_ALLOW_FILE_STORE`` is set;
    a file store is what ``run.tracking_uri`` = '' means, so opt in for file URIs (a user's own
    setting wins)."""
    if uri.startswith("file:") or "://" not in uri:
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")


class MLflowTracker:
    """One MLflow run through MLflowClient (no global active run: trials in one process do not mix)."""

    PARAM_CHARS = 6000  # MLflow's limit on a param value

    def __init__(self, uri: str, experiment: str, run_name: str, tags: Mapping[str, str] | None = None) -> None:
        allow_file_store(uri)
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        exp = self.client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(experiment)
        self.run_id = self.client.create_run(exp_id, run_name=run_name, tags=dict(tags or {})).info.run_id
        self.uri, self._closed = uri, False

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:self.PARAM_CHARS]) for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):  # MLflow's batch limit on params
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, v, now, step) for k, v in _finite(metrics).items()]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i:i + 1000])

    def close(self, status: str = "FINISHED") -> None:
        if not self._closed:
            self._closed = True
            self.client.set_terminated(self.run_id, status=status)


class WandbTracker:
    def __init__(self, run_dir: str | os.PathLike[str], project: str, run_name: str) -> None:
        import wandb

        Path(run_dir).mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=project, name=run_name, dir=str(run_dir), mode="offline", reinit="create_new")

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.run.config.update(dict(params), allow_val_change=True)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.run.log(_finite(metrics), step=step)

    def close(self, status: str = "FINISHED") -> None:
        self.run.finish(exit_code=_exit_code(status))  # non-zero: W&B marks the run failed


_OPEN: weakref.WeakSet[Trackers] = weakref.WeakSet()  # opened in this process and not yet closed


class Trackers:
    """Every tracker of ``run.loggers`` behind the one interface; a tracker that fails while logging
    is reported once and dropped (a tracking server down must not end a training run). As a
    context manager it closes them with the block's :func:`end_status`."""

    def __init__(self, trackers: Sequence[tuple[str, Tracker]]) -> None:
        self.trackers = list(trackers)
        _OPEN.add(self)

    def _each(self, what: str, *args: Any) -> None:
        for name, t in list(self.trackers):
            try:
                getattr(t, what)(*args)
            except Exception as e:  # noqa: BLE001 - logging must not end the run
                log.warning("run.loggers: %s failed to %s (%s: %s); it logs nothing more in this run",
                            name, what, type(e).__name__, e)
                self.trackers.remove((name, t))

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._each("log_params", params)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self._each("log_metrics", metrics, step)

    def log(self, record: Mapping[str, Any], step: int) -> None:
        """A step record (the pipeline's :class:`~raydprm.cluster.step_log.StepLog` call): every number but
        ``step``."""
        self.log_metrics({k: v for k, v in record.items() if k != "step"}, step)

    def close(self, status: str = "FINISHED") -> None:
        """End every tracker's run with ``status`` (one of :data:`STATUSES`); a second close does nothing."""
        if status not in STATUSES:
            raise ValueError(f"a tracker run ends {', '.join(STATUSES)}, not {status!r}")
        _OPEN.discard(self)
        self._each("close", status)
        self.trackers = []

    def end(self, exc: BaseException | None) -> None:
        """Close with the status of a training that ``exc`` ended (None: finished)."""
        self.close(end_status(exc))

    def __enter__(self) -> Trackers:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self.end(exc)


def end_open_trackers(exc: BaseException | None) -> int:
    """End every tracker run this process opened and has not closed with the status of a training
    that ``exc`` ended (the pipeline calls it when a run dies: the stage that opened them never got to
    close them). Returns how many were ended."""
    still = list(_OPEN)
    for t in still:
        t.end(exc)
    return len(still)


def check_installed(loggers: Sequence[str]) -> None:
    """A ConfigError naming the extra when a named tracker's package is missing (before any work)."""
    import importlib.util

    for name in loggers:
        mod = _MODULES.get(name)
        if mod is not None and importlib.util.find_spec(mod) is None:
            raise ConfigError(f"config key 'run.loggers' names '{name}', but the {mod} package is not installed: "
                              "pip install 'raydprm[tracking]'")


def open_trackers(run_cfg: Any, run_dir: str | os.PathLike[str], prefix: str = "",
                  params: Mapping[str, Any] | None = None) -> Trackers:
    """The trackers of ``run_cfg.loggers`` for one training run (``prefix``: a comparison's
    ``<name>/seed<k>/``), with ``params`` (the resolved config) logged once."""
    run_dir = Path(run_dir)
    check_installed(run_cfg.loggers)
    name = run_cfg.name + (f"/{prefix.rstrip('/')}" if prefix else "")
    out: list[tuple[str, Tracker]] = []
    for logger in run_cfg.loggers:
        if logger == "tensorboard":
            out.append((logger, TensorBoardTracker(run_dir / "tb" / prefix)))
        elif logger == "mlflow":
            out.append((logger, MLflowTracker(mlflow_uri(run_cfg), run_cfg.experiment, name, tags={
                "raydprm.run_dir": str(run_dir), "raydprm.policy": prefix.rstrip("/") or "run"})))
        elif logger == "wandb":
            out.append((logger, WandbTracker(run_dir / "wandb" / prefix, run_cfg.experiment, name)))
    trackers = Trackers(out)
    if params is not None:
        trackers.log_params(flatten_params(params))
    return trackers
