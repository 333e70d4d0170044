"""One module per `batchrun` command, named after it (run, status, report, diff, plan, bench, sim).

Each holds the click options and help (with a real example), makes one call
into its domain module (engine, rundir, grading, diffing, plan, bench) and
renders the result (text through textfmt.py, charts through charts.py).
No computing here; cli.py registers each command with one line.
"""
