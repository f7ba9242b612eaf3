"""The simulated crowd: a synthetic world, persona judges, PBDE pairwise labels, LLM judges."""
