"""The scheduler extension: code that runs in the Dask scheduler.

Two scheduler plugins, installed on a run's first use (``client.register_plugin``) or
by the preload (``dask scheduler --preload dynflow.scheduler``):

- the splice (:mod:`._splice`): adds a map's per-item tasks when its expander asks, and
  a dynamic task's returned graph in the task's place;
- the run tracker (:mod:`._tracker`): counts each run's units per node for the views
  (the state in :mod:`._runs`, a map's items in :mod:`._itemtable`), forwards output to
  the run's client, and serves ``df.as_completed``'s streams (:mod:`._streams`) and the
  JSON routes (:mod:`._routes`).

Every change of the scheduler's state goes through the named operations of
:mod:`._ops`, which lists the distributed internals they touch.
"""
