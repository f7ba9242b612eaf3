"""Where a training stage's step records go: :class:`StepLog` is the two calls the stage loop
makes (:meth:`raydprm.cluster.pipeline.Pipeline.metrics_log` picks the sink);
:class:`TensorBoardLog` writes every number of a record under its own name
(``reward/mean``, ``ppo/clipfrac``, ``time/step_s``, ...). An experiment tracker (MLflow,
W&B) is another class with the same two methods, under the same names."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

__all__ = ["StepLog", "TensorBoardLog"]


class StepLog(Protocol):
    def log(self, record: dict[str, Any], step: int) -> None: ...
    def close(self) -> None: ...


class TensorBoardLog:
    """Every number of a step record (but ``step``) as a TensorBoard scalar under its own name."""

    def __init__(self, log_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir))

    def log(self, record: dict[str, Any], step: int) -> None:
        for k, v in record.items():
            if k != "step":
                self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        self.writer.close()
