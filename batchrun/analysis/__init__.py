"""Analysis: numbers about runs, computed and formatted; nothing is sent, nothing is written to a run.

    stats.py     RunStats (a run's live counters and summary), percentiles, the summary text
    textfmt.py   numbers, money, percentages, milliseconds and tables, each spelled once
    grading.py   `batchrun report`: accuracy against gold labels, per model
    diffing.py   `batchrun diff`: what changed between two runs
    plan.py      `batchrun plan`: the forecast of tickets, tokens, cost and duration
    export.py    `batchrun export`: one row per ticket, in input order
    charts.py    PNG charts (matplotlib, optional)
    documents.py the JSON documents above (report, diff, plan) as TypedDicts; StoredJSON
"""
