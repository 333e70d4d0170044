"""Entry point for ``python -m batchrun.sim``: runs `batchrun.sim.command.sim_command`.

Takes the same options as ``batchrun sim`` (see ``python -m batchrun.sim --help``).
`batchrun.sim.process.start_simulator` starts child simulators this way.
"""

from batchrun.sim.command import sim_command

if __name__ == "__main__":
    sim_command(prog_name="python -m batchrun.sim")
