"""Reports of runs: plots and tables."""
