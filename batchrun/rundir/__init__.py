"""rundir: TODO describe."""
