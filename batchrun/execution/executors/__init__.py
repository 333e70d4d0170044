"""executors: TODO describe."""
