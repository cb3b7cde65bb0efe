"""The BIRD process: write its configuration atomically, validate, apply, supervise. The thin shell.

Design note
-----------
Everything that decides *what* BIRD does is pure and lives in ``render``; this module only does the
I/O, in the order that never leaves BIRD worse off:

1. the new text goes to ``bird.cfg.new`` (written, fsynced) and ``bird -p`` parses it; if BIRD
   rejects it, it is kept as ``bird.cfg.rejected`` for a human, the running configuration stays,
   and ``config_valid`` turns false (a metric and felix's readiness show it) until a later render
   is accepted;
2. an accepted file replaces ``bird.cfg`` with ``rename`` (atomic: BIRD, or a person, never reads
   half a file) and BIRD is told ``configure`` on its control socket. BIRD itself restarts only
   the protocols whose configuration changed, so a new block touches one static protocol and no
   BGP session;
3. BIRD runs in the foreground as felix's child (``bird -f``) so felix sees it die at once and
   starts it again with the last good file, with a backoff; a BIRD that is already answering on
   the socket when felix starts (felix restarted, BIRD did not) is adopted, not duplicated.

On stop, a BIRD felix started is asked for a *graceful restart* shutdown: its kernel routes stay
(``persist``) and peers keep its routes for the graceful-restart time, so restarting felix does not
cut pod traffic; BIRD exits within a second, or is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Sequence

from .birdctl import BirdControl, BirdError, ProtocolStatus, parse_protocols

__all__ = ["BirdManager"]

log = logging.getLogger("felix.bgp")
bird_log = logging.getLogger("felix.bgp.bird")


class BirdManager:
    """One BIRD daemon in ``run_dir`` (``bird.cfg``, ``bird.ctl``), optionally inside ``netns``."""

    def __init__(
        self,
        run_dir: str,
        *,
        bird: str = "bird",
        netns: str | None = None,
        restart_backoff: tuple[float, float] = (0.5, 30.0),
        command_timeout: float = 10.0,
    ) -> None:
        self.run_dir = run_dir
        self.config_path = os.path.join(run_dir, "bird.cfg")
        self.socket_path = os.path.join(run_dir, "bird.ctl")
        self.bird = bird
        self.netns = netns
        self.backoff = restart_backoff
        self.timeout = command_timeout
        self.ctl = BirdControl(self.socket_path, timeout=command_timeout)
        self.applied: str | None = None  # the configuration BIRD runs now
        self.config_valid = True  # False while the latest render is rejected
        self.last_error = ""
        self.restarts = 0
        self.applies = 0
        self.rejects = 0
        self.adopted = False
        self.stderr_tail: deque[str] = deque(maxlen=20)
        self._proc: asyncio.subprocess.Process | None = None
        self._stderr_task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._changed = asyncio.Event()  # wakes the supervisor: a first config, or stop

    # -- state ---------------------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.returncode is None else None

    @property
    def running(self) -> bool:
        return self.pid is not None or self.adopted

    # -- applying a configuration ------------------------------------------------------------------------
    async def apply(self, config: str) -> bool:
        """Make BIRD run ``config``. False (and the last good one keeps running) if BIRD rejects it."""
        async with self._lock:
            if config == self.applied and self.running:
                self._accepted()  # the render is back to what runs: a rejection is over
                return True
            os.makedirs(self.run_dir, mode=0o755, exist_ok=True)
            candidate = self.config_path + ".new"
            _write_synced(candidate, config)
            problem = await self._validate(candidate)
            if problem is not None:
                os.replace(candidate, self.config_path + ".rejected")
                self._reject(f"bird -p rejected the new configuration (kept in bird.cfg.rejected): {problem}")
                return False
            os.replace(candidate, self.config_path)
            _sync_dir(self.run_dir)
            if not self.running and not await self._adopt():
                if not await self._start():
                    return False
            else:
                try:
                    reply = await self.ctl.command("configure")
                except BirdError as e:
                    if self.applied is not None:  # BIRD refused it: a restart must not load it either
                        _write_synced(self.config_path, self.applied)
                    self._reject(f"birdc configure failed: {e}")
                    return False
                log.info("BIRD reconfigured: %s", reply.lines[-1][1])
            self.applied = config
            self.applies += 1
            self._accepted()
            self._changed.set()
            return True

    def _accepted(self) -> None:
        if not self.config_valid:
            log.info("BIRD runs the current configuration again")
        self.config_valid, self.last_error = True, ""

    def _reject(self, why: str) -> None:
        self.rejects += 1
        self.config_valid, self.last_error = False, why
        log.error("%s; BIRD keeps running its last good configuration", why)

    async def _validate(self, path: str) -> str | None:
        try:
            proc = await asyncio.create_subprocess_exec(
                self.bird,
                "-p",
                "-c",
                path,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
        except OSError as e:
            return f"cannot run {self.bird}: {e}"
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), self.timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return f"{self.bird} -p took longer than {self.timeout}s"
        if proc.returncode != 0:
            return out.decode(errors="replace").strip() or f"exit code {proc.returncode}"
        return None

    # -- the process -------------------------------------------------------------------------------------
    async def _adopt(self) -> bool:
        """A BIRD already answering on our socket (felix restarted, BIRD did not): configure that one."""
        if self.pid is not None:
            return False
        try:
            await self.ctl.command("configure")
        except BirdError:
            return False
        if not self.adopted:
            log.info("adopted the BIRD already running at %s", self.socket_path)
        self.adopted = True
        return True

    async def _start(self) -> bool:
        cmd: Sequence[str] = [self.bird, "-f", "-c", self.config_path, "-s", self.socket_path]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        try:
            proc = await asyncio.create_subprocess_exec(
                *cmd,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,  # felix, not the terminal or the runtime, decides when it stops
            )
        except OSError as e:
            self.last_error = f"cannot start {self.bird}: {e}"
            log.error("%s", self.last_error)
            return False
        self._proc, self.adopted = proc, False
        self._stderr_task = asyncio.create_task(self._relay_stderr(proc), name="bird-stderr")
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline and proc.returncode is None:
            try:
                await self.ctl.command("show status")
            except BirdError:
                await asyncio.sleep(0.02)
                continue
            log.info("BIRD started (pid %d) with %s", proc.pid, self.config_path)
            return True
        self.last_error = "BIRD did not come up: " + (" / ".join(self.stderr_tail) or "no output")
        log.error("%s", self.last_error)
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        return False

    async def _relay_stderr(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        while line := await proc.stderr.readline():
            text = line.decode(errors="replace").rstrip()
            self.stderr_tail.append(text)
            bird_log.info("%s", text)

    async def run(self) -> None:
        """Supervise until :meth:`stop`: restart a BIRD that died, with the last good configuration."""
        delay = self.backoff[0]
        while not self._stopping.is_set():
            proc = self._proc
            if proc is not None and proc.returncode is None:
                started = time.monotonic()
                await proc.wait()
                if self._stopping.is_set():
                    break
                self.restarts += 1
                tail = " / ".join(list(self.stderr_tail)[-3:]) or "no output"
                self.last_error = f"BIRD exited with code {proc.returncode}: {tail}"
                log.error("%s; restarting it in %.1fs", self.last_error, delay)
                if time.monotonic() - started > 60:
                    delay = self.backoff[0]  # it had been up a while: not a crash loop
            elif self.adopted or self.applied is None:
                self._changed.clear()  # nothing to supervise yet, or not ours: look again in 5 s
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), 5.0)
                if self.adopted and not self._stopping.is_set():
                    await self._check_adopted()
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            if self._stopping.is_set():
                break
            async with self._lock:
                if self.pid is None and not self.adopted and self.applied is not None:
                    await self._start()
            delay = min(delay * 2, self.backoff[1])  # reset once BIRD has stayed up for a minute

    async def _check_adopted(self) -> None:
        try:
            await self.ctl.command("show status")
        except BirdError:
            log.warning("the adopted BIRD stopped answering; starting our own")
            self.adopted = False  # the supervisor starts one with the last good configuration

    async def protocols(self) -> list[ProtocolStatus]:
        return parse_protocols(await self.ctl.command("show protocols all"))

    async def stop(self) -> None:
        """Stop supervising; a BIRD we started shuts down in graceful-restart mode (routes kept)."""
        self._stopping.set()
        self._changed.set()
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(BirdError):
                await asyncio.wait_for(self.ctl.command("graceful restart", check=False), 0.5)
            try:
                await asyncio.wait_for(proc.wait(), 1.0)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        self.ctl.close()
        if self._stderr_task is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._stderr_task, 0.5)


def _write_synced(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _sync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
