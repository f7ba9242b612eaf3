"""Evaluation of trained policies by the simulated population, intervals and run reports.

- :mod:`raydprm.evaluate.judge`: the population's label distributions and per-persona
  expected rewards of (prompt, response) samples laid out as (seeds, prompts).
- :mod:`raydprm.evaluate.stats`: bootstrap 95% intervals over prompts and seeds, head to head.
- :mod:`raydprm.evaluate.report`: ``report.json`` (the pipeline issue's schema), ``report.md``, plots.

No Ray here: the pipeline driver (:mod:`raydprm.cluster.pipeline`) produces the samples.
"""
