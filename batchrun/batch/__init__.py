"""batch: TODO describe."""
