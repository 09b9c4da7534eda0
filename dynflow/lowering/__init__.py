"""Nodes to dask task specs (:mod:`._lower`): which maps expand together
(:mod:`._groups`), the plans their expanders carry to the workers and the scheduler
(:mod:`._expansion`, made of stages: :mod:`._stage`, :mod:`._subflow_stage`, and item
markers: :mod:`._markers`), and what a call that returned a graph becomes
(:mod:`._returned_graph`)."""
