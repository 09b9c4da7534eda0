"""Nodes to dask task specs: which maps expand together, and the plans their expanders
carry to the workers and the scheduler."""
