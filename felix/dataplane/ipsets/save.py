"""Reading ``ipset save`` output back into sets and members. Pure.

``ipset save`` prints each set as a ``create`` line (name, type, header options) followed by one
``add`` line per member, in the form ``ipset restore`` accepts and in the kernel's canonical
notation (a /32 as a bare address, networks masked). Felix keeps only its own sets (``cali4*``,
``cali6*``); any other line is ignored, so foreign sets with odd names or options cannot upset it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from felix.dataplane.iptables.names import owns_set

__all__ = ["KernelSet", "parse_ipset_save"]


@dataclass(slots=True)
class KernelSet:
    type: str
    family: str = "inet"
    maxelem: int = 65536
    members: set[str] = field(default_factory=set)

    def copy(self) -> KernelSet:
        return KernelSet(self.type, self.family, self.maxelem, set(self.members))


def parse_ipset_save(text: str) -> dict[str, KernelSet]:
    """Felix's sets in ``ipset save`` output: name -> ``KernelSet``."""
    sets: dict[str, KernelSet] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 3 or not owns_set(parts[1]):
            continue
        if parts[0] == "create":
            opts = dict(zip(parts[3::2], parts[4::2]))
            try:
                maxelem = int(opts.get("maxelem", "65536"))
            except ValueError:
                maxelem = -1  # unreadable: differs from anything felix wants, so it gets rewritten
            sets[parts[1]] = KernelSet(parts[2], opts.get("family", "inet"), maxelem)
        elif parts[0] == "add" and parts[1] in sets:
            sets[parts[1]].members.add(parts[2])
    return sets
