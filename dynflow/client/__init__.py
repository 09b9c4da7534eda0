"""The user's process: finding the cluster, submitting and computing, runs and their
futures."""
