"""What the user builds, on the client, with no cluster: tasks, nodes, flows, and the
flow-level graph of a run (one box per node). Facade methods (``Node.compute``,
``visualize``, ``_repr_html_``) reach up to :mod:`dynflow.client` and :mod:`dynflow.views`."""
