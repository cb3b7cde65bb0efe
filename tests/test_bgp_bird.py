"""BIRD's control socket and felix's BIRD manager, against real BIRD daemons in network namespaces."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator

import pytest

from felix.bgp.bird import BirdManager
from felix.bgp.birdctl import BirdError, Reply, ReplyReader, parse_protocols

from . import bgp_fixtures as F
from .bgp_lab import Lab, lab_unavailable, since_seconds
from .conftest import kernel_skip, wait_for

SHOW_PROTOCOLS_ALL = (
    b"2002-Name       Proto      Table      State  Since         Info\n"
    b"1002-device1    Device     ---        up     08:23:09.674  \n"
    b"1002-Mesh_198_18_9_1 BGP        ---        up     08:23:10.527  Established   \n"
    b"1006-  Description:    Connection to BGP peer\n"
    b"   BGP state:          Established\n"
    b"     Neighbor address: 198.18.9.1\n"
    b"     Neighbor AS:      64512\n"
    b"   Channel ipv4\n"
    b"     Routes:         3 imported, 1 filtered, 2 exported, 3 preferred\n"
    b"1002-Global_198_18_9_254 BGP        ---        start  08:23:10.671  Active        Socket: Connection refused\n"
    b"1006-  BGP state:          Active\n"
    b"     Neighbor address: 198.18.9.254\n"
    b"     Last error:       Socket: Connection refused\n"
    b"0000 \n"
)


def test_reply_reader_reassembles_replies_split_anywhere() -> None:
    for cut in range(1, len(SHOW_PROTOCOLS_ALL)):
        r = ReplyReader()
        got = r.feed(b"0001 BIRD 2.0.12 ready.\n" + SHOW_PROTOCOLS_ALL[:cut]) + r.feed(SHOW_PROTOCOLS_ALL[cut:])
        assert [x.code for x in got] == [1, 0]
        assert got[1].lines[3] == (1006, "  Description:    Connection to BGP peer")


def test_reply_codes_and_limits() -> None:
    (err,) = ReplyReader().feed(b"9001 syntax error, unexpected CF_SYM_UNDEFINED\n")
    assert not err.ok and err.code == 9001 and "syntax error" in err.text
    (conf,) = ReplyReader().feed(b"0002-Reading configuration from /x/bird.cfg\n0003 Reconfigured\n")
    assert conf.ok and conf.lines[-1] == (3, "Reconfigured")
    with pytest.raises(BirdError, match="larger than"):
        ReplyReader(limit=100).feed(b"1002-" + b"x" * 60 + b"\n" + b" " + b"y" * 60 + b"\n")
    with pytest.raises(BirdError, match="longer than"):
        ReplyReader(limit=100).feed(b"z" * 200)


def test_parse_show_protocols_all() -> None:
    rows = {p.name: p for p in parse_protocols(ReplyReader().feed(SHOW_PROTOCOLS_ALL)[0])}
    assert rows["device1"].proto == "Device" and not rows["device1"].established
    mesh = rows["Mesh_198_18_9_1"]
    assert mesh.established and (mesh.neighbor, mesh.neighbor_as) == ("198.18.9.1", 64512)
    assert (mesh.routes_imported, mesh.routes_filtered, mesh.routes_exported) == (3, 1, 2)
    tor = rows["Global_198_18_9_254"]
    assert tor.state == "start" and tor.info.startswith("Active") and not tor.established
    assert tor.last_error == "Socket: Connection refused"
    assert parse_protocols(Reply(((1002, "short"),))) == []


# --- real BIRD ----------------------------------------------------------------------------------


class Pair:
    """Two nodes in a mesh, each with its own BIRD driven by a BirdManager."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.objects = F.nodes_and_blocks(2)
        self.managers = {
            i: BirdManager(lab.run_dir(i), netns=lab.node_ns(i), restart_backoff=(0.2, 1.0)) for i in (1, 2)
        }
        self.tasks: list[asyncio.Task[None]] = []

    def config(self, i: int) -> str:
        return F.bird_config(self.objects, f"node{i}")

    async def established(self, i: int) -> dict[str, str]:
        try:
            return {p.name: p.since for p in await self.managers[i].protocols() if p.established}
        except BirdError:
            return {}

    async def wait_established(self) -> None:
        for i in (1, 2):
            deadline = time.monotonic() + 20
            while not await self.established(i):
                assert time.monotonic() < deadline, f"node{i}: no session established"
                await asyncio.sleep(0.1)


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    if why := lab_unavailable():
        kernel_skip(why)
    lab = Lab()
    lab.up(tor=False)
    for i in (1, 2):
        lab.add_node(i)
    p = Pair(lab)
    try:
        yield p
    finally:
        for m in p.managers.values():
            await m.stop()
        for t in p.tasks:
            await asyncio.wait_for(t, 5)
        lab.down()


@pytest.mark.slow
async def test_apply_starts_bird_then_reconfigures_without_touching_sessions(pair: Pair) -> None:
    for i in (1, 2):
        assert await pair.managers[i].apply(pair.config(i))
    await pair.wait_established()
    m1, lab = pair.managers[1], pair.lab
    await wait_for(
        lambda: "198.19.1.0/26 via 198.18.9.1" in lab.routes(lab.node_ns(2)), 10, "node2 learns node1's block"
    )
    assert "198.19.1.0/26" not in lab.routes(lab.node_ns(1)), "own blocks are never BIRD's in the kernel"
    before = await pair.established(1)

    pair.objects.append(F.affinity("node1", "198.19.1.64/26"))  # a new block for node1
    assert await m1.apply(pair.config(1))
    await wait_for(lambda: "198.19.1.64/26 via 198.18.9.1" in lab.routes(lab.node_ns(2)), 10, "the new block")
    after = await pair.established(1)
    assert after.keys() == before.keys()
    assert all(abs(since_seconds(after[k]) - since_seconds(v)) < 0.1 for k, v in before.items()), "no restart"
    applies = m1.applies
    assert await m1.apply(pair.config(1))
    assert m1.applies == applies, "the same text is not applied twice"
    with open(m1.config_path) as f:
        assert f.read() == pair.config(1)


@pytest.mark.slow
async def test_an_invalid_render_keeps_the_last_good_config_running(pair: Pair) -> None:
    m1 = pair.managers[1]
    for i in (1, 2):
        assert await pair.managers[i].apply(pair.config(i))
    await pair.wait_established()
    good = pair.config(1)
    assert not await m1.apply(good + "\nprotocol nonsense {\n")
    assert not m1.config_valid and "bird -p rejected" in m1.last_error
    assert os.path.exists(m1.config_path + ".rejected")
    with open(m1.config_path) as f:
        assert f.read() == good
    assert await pair.established(1), "BIRD still runs the last good configuration"
    assert m1.running and m1.rejects == 1
    assert await m1.apply(good) and m1.config_valid and m1.last_error == ""


@pytest.mark.slow
async def test_bird_is_restarted_when_it_dies(pair: Pair) -> None:
    m1 = pair.managers[1]
    for i in (1, 2):
        assert await pair.managers[i].apply(pair.config(i))
    pair.tasks.append(asyncio.create_task(m1.run()))
    await pair.wait_established()
    old = m1.pid
    assert old is not None
    os.kill(old, signal.SIGKILL)
    await wait_for(lambda: m1.pid not in (None, old), 10, "a new BIRD")
    assert m1.restarts == 1 and "exited with code" in m1.last_error
    await pair.wait_established()


@pytest.mark.slow
async def test_stop_is_graceful_fast_and_keeps_kernel_routes(pair: Pair) -> None:
    for i in (1, 2):
        assert await pair.managers[i].apply(pair.config(i))
    await pair.wait_established()
    lab = pair.lab
    await wait_for(lambda: "198.19.2.0/26" in lab.routes(lab.node_ns(1)), 10, "node1 learns node2's block")
    pid = pair.managers[1].pid
    t0 = time.monotonic()
    await pair.managers[1].stop()
    assert time.monotonic() - t0 < 1.5
    assert pid is not None and _gone(pid), "BIRD exited"
    assert "198.19.2.0/26" in lab.routes(lab.node_ns(1)), "persist: BIRD's kernel routes outlive it"


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return "zombie" in f.read()
    except OSError:
        return True


@pytest.mark.slow
async def test_a_running_bird_is_adopted_not_duplicated(pair: Pair) -> None:
    assert await pair.managers[1].apply(pair.config(1))
    pid = pair.managers[1].pid
    second = BirdManager(pair.lab.run_dir(1), netns=pair.lab.node_ns(1))
    assert await second.apply(pair.config(1))
    assert second.adopted and second.pid is None and second.running
    assert {p.name for p in await second.protocols()} >= {"calico_local", "Mesh_198_18_9_2"}
    await second.stop()
    assert pair.managers[1].pid == pid, "stopping an adopted BIRD leaves it running"
