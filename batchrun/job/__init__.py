"""job: TODO describe."""
