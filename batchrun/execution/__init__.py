"""execution: TODO describe."""
