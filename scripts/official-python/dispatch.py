# Creates a dispatch through the official Python server SDK and waits until
# ListDispatch shows its job SUCCESS (see run.sh).
import asyncio, os
from livekit import api

async def main():
    lk = api.LiveKitAPI(os.environ["LIVEKIT_URL"], os.environ["LIVEKIT_API_KEY"], os.environ["LIVEKIT_API_SECRET"])
    d = await lk.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(agent_name="py-agent", room="pyroom2", metadata="{}"))
    print("created", d.id)
    for _ in range(40):
        await asyncio.sleep(0.25)
        ds = await lk.agent_dispatch.list_dispatch(room_name="pyroom2")
        jobs = [j for x in ds for j in x.state.jobs]
        if jobs and all(j.state.status == api.JobStatus.JS_SUCCESS for j in jobs):
            print("jobs", [(j.id, api.JobStatus.Name(j.state.status)) for j in jobs]); break
    else:
        print("no success", ds)
    await lk.aclose()

asyncio.run(main())
