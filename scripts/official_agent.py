"""The official Python worker as the benchmark's other side.

Run by scripts/compare-official.sh through `bench --compare-command`, with
LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET and LIVEKIT_AGENT_NAME in its
environment. Like the lkagent bench worker, a job ends at once unless its
metadata is "idle", in which case it waits for the server's termination. It
never connects to the room: the measure is the framework's own cost.

The load is reported as zero with the threshold at 1 (the official worker's
default threshold is 0.7 of the CPU): a two-core machine busy starting job
processes would otherwise report FULL and refuse the very jobs being timed.
"""

import os

from livekit.agents import JobContext, WorkerOptions, cli


async def entrypoint(ctx: JobContext) -> None:
    if ctx.job.metadata != "idle":
        ctx.shutdown(reason="bench: done")


def no_load(*_args: object) -> float:
    return 0.0


if __name__ == "__main__":
    cli.run_app(
        WorkerOptions(
            entrypoint_fnc=entrypoint,
            agent_name=os.environ["LIVEKIT_AGENT_NAME"],
            load_fnc=no_load,
            load_threshold=1.0,
        )
    )
