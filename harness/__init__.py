"""resbench harness: the shared model, measuring, running suites and reporting."""
