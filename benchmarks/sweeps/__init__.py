"""Grids of runs: parsing and expansion, the worker, the one scheduling loop, local and Ray executors, reproduce."""
