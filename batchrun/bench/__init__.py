"""bench: TODO describe."""
