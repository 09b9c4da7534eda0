"""What runs on the workers and in the scheduler: calls with retries and timeouts,
failure records and collectors, the expander, the splice extension, the run tracker."""

from dynflow.cluster._logs import install as _quiet_internal_failures

_quiet_internal_failures()  # any process that runs dynflow's tasks imports this package
