"""raydprm."""
