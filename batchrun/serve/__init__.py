"""`batchrun serve`: a live page of the runs under a directory, over Server-Sent Events.

    follow.py    following checkpoint files from the last offset; numbers kept
                 incrementally (memory bounded by failures and time, not lines)
    runs.py      the runs under RUNS_DIR: safe names, liveness (run.lock), states,
                 one RunWatch per run, the status numbers, grading once stopped
    app.py       the aiohttp app: pages, /api/runs, /api/runs/{name}, its events
    server.py    binding and serving (the token rule, signals), and
                 `serve_in_background` for `batchrun run --serve`
    grade.py     the child process that grades a stopped run

The command itself is batchrun/commands/serve.py; the manual docs/serve.md.
    static/      index.html, run.html, app.js (EventSource, inline SVG), style.css

aiohttp is already a core dependency: no extra is needed to serve.
"""
