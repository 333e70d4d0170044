"""Providers: the only code that touches litellm (tests/test_layout.py checks it).

    seam.py           the Provider and BatchAPI protocols, ChatRequest, RequestOptions, BatchPrices,
                      BatchClaim, BatchLine
    litellm_setup.py  the lazy, configured import of litellm; model and [params] checks; token
                      counts and prices for plan and bench
    tuning.py         batchrun's patches to litellm internals, each checked and measured
    online.py         LiteLLMProvider: one attempt through litellm.acompletion, usage and cost
    error_mapping.py  every provider error onto errors.RequestError, once
    cache.py          ResponseCache: accepted answers kept on disk or in Redis
    batch_api.py      LiteLLMBatchAPI: files, batches and their output through litellm; the
                      BatchAPI of a model (build_batch_api) and its batch price (batch_prices_of)
    anthropic_batch.py  AnthropicBatchAPI: Anthropic's Message Batches through its SDK (the
                      anthropic extra), requests and answers through litellm's Anthropic code
    fake.py           ScriptedProvider, the fake Provider of tests
"""
