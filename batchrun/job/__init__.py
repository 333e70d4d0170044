"""The job: what to run, over which tickets, and what counts as an answer. No network, no litellm.

    spec.py           JobSpec: the job file, validated ("did you mean ...?"), its overrides,
                      fingerprint, models, routes and fallbacks; load_job(path)
    sections.py       the job file's tables: [prompt], [params], [retry], [prices], [simulator],
                      [[tools]], [[models]], [[routes]]
    templates.py      PromptTemplate ({field} as data), render_messages(job, ticket)
    tickets.py        read_tickets (streamed), scan_input (every bad line before any request),
                      the resume plan of an input
    input_formats.py  CSV, TSV and Parquet rows, streamed
    answer_checks.py  labels, JSON schema and tool calls: is an answer acceptable
    starter.py        `batchrun init`'s commented job file
"""
