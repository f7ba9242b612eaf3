"""Experiments: readable, script-like reproductions of the papers' figures on a laptop CPU.

A layer above the library: an experiment may import anything of raydprm except the CLI.
One module per experiment family; each has ``run(out_dir, quick=False) -> metrics`` and
writes its plots and ``metrics.json`` under ``out_dir``.

* :mod:`raydprm.experiments.pbde` — the 1-D density-estimation toys of Dumoulin et al.
  (TMLR 2024): BT recovers p*, DPO's and Eq. 18's optima, annotator misspecification and
  the mixture-model fix, SLiC-HF and IPO sweeps.
* :mod:`raydprm.experiments.length_bias` — tiny LMs as short/long annotators: the Luce
  rule's length bias, the length-normalised rule, annotator vs density mixtures.
* :mod:`raydprm.experiments.drift` — live preference shift: the crowd changes during PPO; the
  reward model refreshed from the store every K steps vs never, judged by the new crowd.
"""
