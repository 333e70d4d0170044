"""Providers: the only code that touches litellm (tests/test_layout.py checks it).

    seam.py           the Provider and BatchAPI protocols, ChatRequest, RequestOptions, BatchPrices
    litellm_setup.py  the lazy, configured import of litellm; model and [params] checks; token
                      counts and prices for plan and bench
    tuning.py         batchrun's patches to litellm internals, each checked and measured
    online.py         LiteLLMProvider: one attempt through litellm.acompletion, usage and cost
    error_mapping.py  every provider error onto errors.RequestError, once
    cache.py          ResponseCache: accepted answers kept on disk or in Redis
    batch_api.py      LiteLLMBatchAPI: files, batches and their output through litellm
    fake.py           ScriptedProvider, the fake Provider of tests
"""
