"""Studies built on the runner's records: depth scaling, loss."""
