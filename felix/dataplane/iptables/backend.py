"""Running iptables and ipset: the backend (nft or legacy), the xtables lock, the network namespace.

Design note
-----------
Two kernels subsystems answer to "iptables": the legacy xtables tables and nftables (through
``iptables-nft``). They coexist, and rules in one are invisible to the other's tools, so felix must
write where the node's other programs (kube-proxy, the distribution) write. ``IptablesBackend``
chooses: ``nft``, ``legacy``, or ``auto``, which detects it like Calico and kube-proxy's
iptables-wrapper do: Kubernetes' marker chains (``KUBE-IPTABLES-HINT``, ``KUBE-KUBELET-CANARY``) in
a backend's mangle table decide; otherwise the backend holding more rules wins. On a tie (an empty
node) Calico picks legacy; we pick what the node's own ``iptables`` command uses (its ``--version``
says ``nf_tables`` or ``legacy``), since that is where an administrator's rules will land. The
legacy backend is only probed when its kernel module is already loaded (``/proc/net/ip_tables_names``):
probing would load it on a node that deliberately runs nftables only.

The xtables lock. Legacy iptables serialises writers with a lock file (``/run/xtables.lock``); a
writer that cannot take it fails at once unless it is told to wait. ``iptables-restore`` takes
``-w <seconds> -W <microseconds>`` (since 1.6.2) to wait for it, so felix never fails just because
kube-proxy is writing at the same moment. iptables-nft accepts the flags too (nftables transactions
need no lock). ``iptables-save`` reads without the lock.

Namespaces. Felix can program another network namespace (``--netns``, used by tests and the
benchmark). The tools then run inside it through ``nsenter --net=<path>``: an extra exec costs
about a millisecond, whereas joining the namespace in a ``preexec_fn`` forces ``subprocess`` to
``fork()`` instead of ``vfork()``, which in a felix holding 100k ip set members cost 120 ms per
tool run here (measured), ten times the whole run. The ``preexec_fn`` path remains only for hosts
without ``nsenter``.

``Runner.stream`` writes a tool's input chunk by chunk as the caller produces it, so
iptables-restore parses the first part of a transaction while the ip sets its second part names
are still being created; if the caller gives up before the end, the tool is killed before it reads
its COMMIT.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

__all__ = ["Backend", "CommandResult", "Runner", "ToolError", "detect_backend"]

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_VERSION = re.compile(r"v(\d+)\.(\d+)\.(\d+)")


class ToolError(OSError):
    pass


@dataclass(frozen=True, slots=True)
class CommandResult:
    rc: int
    out: str
    err: str


Run = Callable[[Sequence[str], str | None], CommandResult]


class Runner:
    """Runs a command (optionally inside a network namespace) and captures its output."""

    def __init__(self, netns: str | None = None, timeout: float = 60.0) -> None:
        self.netns = netns
        self.timeout = timeout
        self.path = None if netns is None else (netns if "/" in netns else f"/run/netns/{netns}")
        if self.path is not None and not os.path.exists(self.path):
            raise ToolError(f"network namespace {netns!r} does not exist ({self.path})")
        self.nsenter = shutil.which("nsenter") if self.path is not None else None
        self.calls = 0

    def stream(self, argv: Sequence[str], chunks: Iterable[str]) -> CommandResult:
        """Run with the input written chunk by chunk as ``chunks`` yields it, so the tool parses
        the first while the caller prepares the next. If ``chunks`` raises, the tool is killed
        before it reads the end of its input (iptables-restore then commits nothing) and the
        exception propagates."""
        if self.path is not None and not self.nsenter:
            return self(argv, "".join(chunks))  # the preexec_fn fallback runs whole inputs only
        self.calls += 1
        cmd = list(argv) if self.path is None else [str(self.nsenter), f"--net={self.path}", "--", *argv]
        try:
            p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except FileNotFoundError as exc:
            raise ToolError(f"{argv[0]} is not installed: {exc}") from None
        with p:
            assert p.stdin is not None
            try:
                try:
                    for chunk in chunks:
                        p.stdin.write(chunk.encode())
                        p.stdin.flush()
                except BrokenPipeError:
                    pass  # the tool stopped reading (it failed): its exit status and stderr say why
                out, err = p.communicate(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                raise ToolError(f"{argv[0]} did not finish within {self.timeout:.0f} s") from None
            finally:
                if p.returncode is None:  # aborted by the caller, or timed out: commit nothing
                    p.kill()
                    p.wait()
        return self._result(argv, p.returncode, out, err)

    def __call__(self, argv: Sequence[str], stdin: str | None = None) -> CommandResult:
        self.calls += 1
        fd = -1
        kwargs: dict[str, object] = {}
        cmd = list(argv)
        if self.path is not None and self.nsenter:
            cmd = [self.nsenter, f"--net={self.path}", "--", *cmd]
        elif self.path is not None:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            setns = _libc.setns

            def enter() -> None:  # runs in the child between fork and exec: keep it minimal
                if setns(fd, CLONE_NEWNET) != 0:
                    os._exit(127)

            kwargs = {"preexec_fn": enter, "pass_fds": (fd,)}
        try:
            # Bytes, decoded here: text=True looks the locale up on every run (~2 ms).
            p = subprocess.run(  # type: ignore[call-overload]
                cmd,
                input=None if stdin is None else stdin.encode(),
                capture_output=True,
                timeout=self.timeout,
                check=False,
                **kwargs,
            )
        except FileNotFoundError as exc:
            raise ToolError(f"{argv[0]} is not installed: {exc}") from None
        except subprocess.TimeoutExpired:
            raise ToolError(f"{argv[0]} did not finish within {self.timeout:.0f} s") from None
        finally:
            if fd >= 0:
                os.close(fd)
        return self._result(argv, p.returncode, p.stdout, p.stderr)

    def _result(self, argv: Sequence[str], rc: int, stdout: bytes, stderr: bytes) -> CommandResult:
        out, err = stdout.decode(errors="replace"), stderr.decode(errors="replace")
        if rc in (126, 127) and self.nsenter and err.startswith("nsenter:"):
            if "failed to execute" in err:
                raise ToolError(f"{argv[0]} is not installed: {err.strip()}")
            raise ToolError(f"cannot enter network namespace {self.netns!r}: {err.strip()}")
        return CommandResult(rc, out, err)


def _version(text: str) -> tuple[int, int, int] | None:
    m = _VERSION.search(text)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else None


@dataclass(frozen=True, slots=True)
class Backend:
    """The iptables commands of one backend, and what that version of them supports."""

    name: str  # "nft" or "legacy"
    version: tuple[int, int, int] = (1, 8, 9)
    lock_timeout: float = 10.0
    lock_probe: float = 0.05

    def binary(self, ip_version: int, tool: str) -> str:
        """``iptables-nft-restore`` and friends, falling back to the plain name."""
        six = "6" if ip_version == 6 else ""
        specific = f"ip{six}tables-{self.name}-{tool}"
        return specific if shutil.which(specific) else f"ip{six}tables-{tool}"

    def restore_argv(self, ip_version: int) -> list[str]:
        argv = [self.binary(ip_version, "restore"), "--noflush"]
        if self.version >= (1, 6, 2):
            argv += ["-w", f"{max(1, round(self.lock_timeout))}", "-W", f"{max(1, int(self.lock_probe * 1e6))}"]
        return argv

    def save_argv(self, ip_version: int, table: str | None = None) -> list[str]:
        save = self.binary(ip_version, "save")
        return [save, "-t", table] if table else [save]

    @property
    def reliable_replace(self) -> bool:
        """iptables-nft before 1.8.3 mis-numbers ``-R`` after the first one in a transaction."""
        return self.name != "nft" or self.version >= (1, 8, 3)


def _count_rules(text: str) -> int:
    return sum(1 for line in text.splitlines() if line.startswith("-A "))


def _k8s_marked(text: str) -> bool:
    return "KUBE-IPTABLES-HINT" in text or "KUBE-KUBELET-CANARY" in text


def detect_backend(
    setting: str, run: Run, lock_timeout: float = 10.0, legacy_loaded: Callable[[], bool] | None = None
) -> tuple[Backend, str]:
    """The backend to use and a sentence saying why (for the start-up log)."""
    if legacy_loaded is None:

        def legacy_loaded() -> bool:
            try:
                return bool(run(["cat", "/proc/net/ip_tables_names"], None).out.strip())
            except ToolError:
                return False

    def tool_version(name: str) -> tuple[int, int, int]:
        b = Backend(name)
        try:
            r = run([b.binary(4, "restore"), "--version"], None)
        except ToolError:
            return (0, 0, 0)
        return _version(r.out + r.err) or (0, 0, 0)

    def save(name: str, table: str | None = None) -> str:
        if name == "legacy" and not legacy_loaded():
            return ""
        try:
            return run(Backend(name).save_argv(4, table), None).out
        except ToolError:
            return ""

    setting = setting.lower()
    if setting in ("nft", "legacy"):
        chosen, why = setting, "set by IptablesBackend"
    elif _k8s_marked(save("nft", "mangle")):
        chosen, why = "nft", "Kubernetes' marker chains are in nftables"
    elif _k8s_marked(save("legacy", "mangle")):
        chosen, why = "legacy", "Kubernetes' marker chains are in legacy iptables"
    else:
        nft, legacy = _count_rules(save("nft")), _count_rules(save("legacy"))
        if nft != legacy:
            chosen = "nft" if nft > legacy else "legacy"
            why = f"it holds more rules ({max(nft, legacy)} against {min(nft, legacy)})"
        else:
            try:
                default = run(["iptables", "--version"], None).out
            except ToolError:
                default = ""
            chosen = "legacy" if "legacy" in default else "nft"
            why = f"no rules in either backend; the node's iptables command uses {chosen}"
    return Backend(chosen, tool_version(chosen), lock_timeout), why
