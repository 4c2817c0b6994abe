# An official LiveKit Python agent (livekit-agents) for scripts/official-python/run.sh:
# it logs the job it gets and ends it after a second.
import asyncio, logging
from livekit import agents
from livekit.agents import AgentServer, JobContext, cli

server = AgentServer()

@server.rtc_session(agent_name="py-agent")
async def entry(ctx: JobContext):
    logging.info("PYJOB started %s room=%s", ctx.job.id, ctx.job.room.name)
    await asyncio.sleep(1)
    logging.info("PYJOB done %s", ctx.job.id)
    ctx.shutdown("done")

if __name__ == "__main__":
    cli.run_app(server)
