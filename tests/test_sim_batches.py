"""The simulator's Batch API pieces that need no server: fault rules and their command-line form."""

from __future__ import annotations

import pytest

from batchrun.sim.batch_faults import BatchFault, coerce_batch_faults
from batchrun.sim.config import SimConfig


def test_batch_fault_specs_round_trip_and_hit_what_they_name():
    rule = BatchFault.parse("expire:batches=1+3,rate=0.25")
    assert (rule.kind, rule.batches, rule.rate) == ("expire", (1, 3), 0.25)
    assert BatchFault.parse(rule.to_spec()) == rule
    assert rule.hits_batch(3) and not rule.hits_batch(2) and not rule.hits_call("create", 1)
    call = BatchFault.parse("500:endpoint=retrieve,calls=2")
    assert call.hits_call("retrieve", 2) and not call.hits_call("retrieve", 1) and not call.hits_call("list", 2)
    assert BatchFault.parse("create_lost").endpoint == "create"


@pytest.mark.parametrize("spec, message", [
    ("explode", "unknown batch fault kind"),
    ("429", "needs endpoint"),
    ("create_lost:endpoint=list", "create only"),
    ("expire:rate=2", "between 0 and 1"),
    ("expire:batches=0", "1-based"),
])
def test_bad_batch_faults_are_refused_with_the_reason(spec, message):
    with pytest.raises(ValueError, match=message):
        BatchFault.parse(spec)


def test_batch_settings_reach_a_child_simulator_through_its_flags():
    config = SimConfig(batch_time_scale=7200.0, batch_duration_s=60.0, batch_state_dir="/tmp/x",
                       batch_faults=coerce_batch_faults([{"kind": "invalid", "batches": [2]}]))
    args = config.to_cli_args()
    assert args[args.index("--batch-time-scale") + 1] == "7200.0"
    assert args[args.index("--batch-fault") + 1] == "invalid:batches=2"
    assert args[args.index("--batch-state-dir") + 1] == "/tmp/x"
    with pytest.raises(ValueError, match="batch_time_scale"):
        SimConfig(batch_time_scale=0)
