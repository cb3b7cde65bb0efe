"""Is the API server answering? One cheap, shared question, so followers neither oversleep nor hammer.

Design note
-----------
When the API server goes away every follower (one per resource) fails and backs off exponentially,
up to 30 s. That is right while the server is down, since 17 followers retrying in a tight loop
would not bring it back sooner, and wrong the moment it returns: a follower that has just gone to
sleep for 25 s sleeps through the return (measured before this module: back in sync 21-26 s after a
20 s outage). Capping the backoff lower would trade that for more requests against a server that is
struggling.

So a follower that could not *reach* the server sleeps on this probe instead of on its timer: while
anybody waits, one task asks the server a cheap question (``GET /version``) once per ``interval``
and wakes every waiter at the first answer; a waiter still wakes at the end of its own backoff if
nothing answers. Any HTTP answer counts, even 401 or 403: the server is there, and the follower's own
request will say what is wrong. Failures where the server did answer keep plain backoff, because
asking again sooner would get the same answer.

The same question tells a silent watch (no event and no bookmark for twice the bookmark interval)
from a quiet one: a server that answers is alive and the watch is merely restarted; one that does
not is frozen or cut off, and the resource waits for the datastore until it answers again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("typha.kubernetes")


class Probe:
    """Shared reachability checks: `answers()` asks once, `wait_for_answer()` sleeps until one comes."""

    def __init__(self, ask: Callable[[float], Awaitable[object]], interval: float = 1.0, timeout: float = 5.0) -> None:
        self._ask = ask  # one request with the given timeout; raises if no HTTP answer came
        self.interval = interval
        self.timeout = timeout
        self._answered = asyncio.Event()  # replaced by a fresh one each time it is set
        self._waiters = 0
        self._task: asyncio.Task[None] | None = None
        self.probes = 0
        self.answered = 0

    async def answers(self) -> bool:
        """Ask once, now: did the server answer within `timeout`?"""
        self.probes += 1
        try:
            await asyncio.wait_for(self._ask(self.timeout), self.timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # no answer, whatever the reason: that is all this says
            log.debug("API server probe: no answer (%s)", exc)
            return False
        self.answered += 1
        return True

    async def wait_for_answer(self, max_wait: float) -> bool:
        """Sleep up to ``max_wait`` seconds, less if the server answers a probe meanwhile (then True)."""
        answered = self._answered
        self._waiters += 1
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="api-probe")
        try:
            await asyncio.wait_for(answered.wait(), max_wait)
            return True
        except TimeoutError:
            return False
        finally:
            self._waiters -= 1

    async def _run(self) -> None:
        try:
            while self._waiters:
                await asyncio.sleep(self.interval)
                if self._waiters and await self.answers():
                    answered, self._answered = self._answered, asyncio.Event()
                    answered.set()
        finally:
            self._task = None

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
