"""What runs on the workers and in the scheduler: calls with retries and timeouts,
failure records and collectors, the expander, the splice extension, the run tracker."""
