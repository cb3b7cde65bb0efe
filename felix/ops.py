"""Felix's /liveness, /readiness, /status and /metrics.

Ready means: in sync with typha, connected now, our Node known, the first programming pass done, and
nothing kept out of the kernel for longer than the grace period (see `felix.agent`). Live means the
event loop is turning (the handler answers at all) and the agent task has not died. `/status` is JSON
for people: the readiness verdict and every current problem (pending or failing routes, devices)
with its reason and age.
"""

from __future__ import annotations

from aiohttp import web

from common.ops import metrics_app, start_site

from .agent import FelixAgent

__all__ = ["health_app", "metrics_app", "start_site"]


def health_app(agent: FelixAgent, agent_task_done: object) -> web.Application:
    async def liveness(request: web.Request) -> web.Response:
        if callable(agent_task_done) and agent_task_done():
            return web.Response(status=503, text="agent stopped\n")
        return web.Response(text="live\n")

    async def readiness(request: web.Request) -> web.Response:
        why = agent.not_ready_because()
        if why is None:
            return web.Response(text="ready\n")
        return web.Response(status=503, text=why + "\n")

    async def status(request: web.Request) -> web.Response:
        return web.json_response(agent.status())

    app = web.Application()
    app.router.add_get("/liveness", liveness)
    app.router.add_get("/readiness", readiness)
    app.router.add_get("/status", status)
    return app
