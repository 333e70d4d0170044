"""Batch-mode fields of the job file: defaults, cross-field checks, refusals, batch prices."""

from __future__ import annotations

import pytest

from batchrun.errors import JobSpecError
from batchrun.job.spec import load_job


def test_batch_fields_default_to_openai_limits(make_job):
    job = load_job(make_job(3, top='mode = "batch"\n'))
    assert (job.mode, job.batch_max_requests, job.batch_max_bytes) == ("batch", 50_000, 200_000_000)
    assert load_job(make_job(3)).mode == "online"


def test_poll_interval_must_not_exceed_its_maximum(make_job):
    with pytest.raises(JobSpecError, match="batch_poll_s must not exceed batch_poll_max_s"):
        load_job(make_job(3, top='mode = "batch"\nbatch_poll_s = 10\nbatch_poll_max_s = 5\n'))


def test_a_model_without_batch_creation_is_refused_only_in_batch_mode(make_job):
    assert load_job(make_job(3, model="groq/llama-3.1-8b-instant")).mode == "online"
    with pytest.raises(JobSpecError, match="no batch creation for groq"):
        load_job(make_job(3, model="groq/llama-3.1-8b-instant", top='mode = "batch"\n'))
    # Anthropic's Message Batches are reached through its SDK (providers/anthropic_batch.py)
    assert load_job(make_job(3, model="anthropic/claude-haiku-4-5", top='mode = "batch"\n')).mode == "batch"


def test_batch_prices_go_in_pairs_and_win_over_half_the_online_ones(make_job):
    with pytest.raises(JobSpecError, match="go together"):
        load_job(make_job(3, extra="[prices]\ninput_per_million = 1\noutput_per_million = 2\n"
                                   "batch_input_per_million = 0.4\n"))
    from batchrun.providers.batch_api import LiteLLMBatchAPI

    job = load_job(make_job(3, extra="[prices]\ninput_per_million = 1\noutput_per_million = 2\n"))
    half = LiteLLMBatchAPI(model=job.model, prices=job.prices).batch_prices()
    assert half.status == "job_prices_half"
    assert half.input_per_token == pytest.approx(0.5e-6) and half.output_per_token == pytest.approx(1e-6)
    job = load_job(make_job(3, extra="[prices]\ninput_per_million = 1\noutput_per_million = 2\n"
                                     "batch_input_per_million = 0.4\nbatch_output_per_million = 0.8\n"))
    own = LiteLLMBatchAPI(model=job.model, prices=job.prices).batch_prices()
    assert own.status == "job_prices"
    assert own.input_per_token == pytest.approx(0.4e-6) and own.output_per_token == pytest.approx(0.8e-6)
    unknown = LiteLLMBatchAPI(model="openai/no-such-model-xyz").batch_prices()
    assert unknown is None
