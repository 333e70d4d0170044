"""The embedded OpenAI-compatible simulator (see server.py).

A stand-in LLM provider for tests, benchmarks and demos: it serves the OpenAI
chat completions API (plain and streaming, structured outputs and tool calls)
with deterministic answers, reproducible latency, optional rate limits, a
capacity model, injected faults and request counters. Modules:

* ``config.py``: `SimConfig`, the knobs (latency, jitter, seed, model name,
  faults, rpm/tpm, capacity).
* ``server.py``: the aiohttp application (`build_app`) and `serve`; its
  docstring is the manual.
* ``faults.py``: `FaultRule` and `FaultPlan`, deterministic fault injection.
* ``limits.py``: `RateLimiter` (rpm/tpm token buckets) and the overload formula.
* ``structured.py``: JSON-mode / JSON-schema answers and tool calls.
* ``answers.py``: `compose_answer`, the deterministic answer text.
* ``tokens.py``: the cheap tokenizer used for usage, truncation and chunking.
* ``jsontypes.py``: names for the JSON the simulator reads and writes (types only).
* ``command.py``: the ``batchrun sim`` click command (`sim_command`).
* ``batches.py``, ``batch_faults.py``: OpenAI's Batch API (``/v1/files``,
  ``/v1/batches``) and its faults; ``anthropic_batches.py``: Anthropic's
  Message Batches (``/v1/messages/batches``) on the same machinery.
* ``process.py``: `start_simulator`, a child-process simulator for tests.
* ``__main__.py``: ``python -m batchrun.sim``.
"""
