"""`batchrun bench`: a concurrency sweep on a sample of the job's tickets, and a recommendation.

    sweep.py      run_bench: the simulator (or --live), one run per setting through the launcher
    recommend.py  the rows, the table and the recommended setting (pure functions)
    baseline.py   the bare litellm pattern measured beside batchrun on the same tickets
"""
