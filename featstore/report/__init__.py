"""Text tables of stores, runs and sweeps."""
