"""Code that runs inside tasks on the workers (and in local schedulers): calls with
retries, timeouts and caching (:mod:`._calls`, :mod:`._cache`), what a running call
knows of itself (:mod:`._call_context`) and reports to the tracker and its client
(:mod:`._reports`), worker log lines about dynflow's own tasks (:mod:`._logs`), failure
records (:mod:`._failure`), collectors (:mod:`._collect`), the expander that asks for a
map's splice (:mod:`._expander`), and the request that splices a dynamic task's returned
graph (:mod:`._graph_splice`)."""

from dynflow.worker._logs import install as _quiet_internal_failures

_quiet_internal_failures()  # any process that runs dynflow's tasks imports this package
