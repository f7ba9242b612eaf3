"""report.md names how its KL is measured, and the KL curves are the exact KL (issue 25, part 5)."""

import numpy as np
from test_evaluate import _judged

from raydprm.config import HH_LABELS, HH_REWARDS
from raydprm.evaluate.report import CURVE_KEYS, build_report, curves, write_report


def test_report_names_the_kl_estimator_and_plots_the_exact_kl(tmp_path):
    rng = np.random.default_rng(0)
    judged = {n: _judged(rng, 2, 20) for n in ("vanilla", "dprm_ot")}
    rep = build_report(judged, HH_REWARDS, n_boot=100)
    rep["ppo"] = [{"step": s, "reward/mean": 0.1 * s, "ppo/kl": -0.05 * s, "ppo/kl_exact": 0.02 * s} for s in (1, 2)]
    write_report(rep, tmp_path, HH_LABELS)
    md = (tmp_path / "report.md").read_text()
    assert "exact per-token KL(pi || pi_SFT) over the vocabulary" in md and "ppo.kl_estimator" in md
    assert "ppo/kl_exact" in CURVE_KEYS
    assert curves({"p": [rep["ppo"]]})["p"]["ppo/kl_exact"] == [0.02, 0.04]
