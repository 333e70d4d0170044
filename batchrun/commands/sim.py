"""`batchrun sim`: serve the embedded OpenAI-compatible simulator.

The command itself lives in `batchrun.sim.command` so that `python -m batchrun.sim`
works without the rest of batchrun (sim/ imports nothing of batchrun); this
module only names it for cli.py.
"""

from __future__ import annotations

from batchrun.sim.command import sim_command

__all__ = ["sim_command"]


