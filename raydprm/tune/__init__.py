"""Ray Tune sweeps of the pipeline: search spaces in YAML (``space``), how many trials fit
(``capacity``), the results table and plots (``results``), and the one module that imports
``ray.tune`` (``sweep``). ``raydprm sweep SPACE.yaml`` is the command; docs/sweeps.md the guide."""
