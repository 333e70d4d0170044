"""analysis: TODO describe."""
