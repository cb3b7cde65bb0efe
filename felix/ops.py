"""Felix's /liveness, /readiness and /metrics.

Ready means: in sync with typha, the first programming pass done, and connected now. Live means the
event loop is turning (the handler answers at all) and the agent task has not died.
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
        if agent.ready:
            return web.Response(text="ready\n")
        if not agent.in_sync:
            why = "not yet in sync with typha"
        elif agent.typha_address is None:
            why = "not connected to typha"
        else:
            why = "routes not yet programmed"
        return web.Response(status=503, text=why + "\n")

    app = web.Application()
    app.router.add_get("/liveness", liveness)
    app.router.add_get("/readiness", readiness)
    return app
