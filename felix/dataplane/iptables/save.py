"""Reading ``iptables-save`` output back: which rules in each chain are ours, by their hash. Pure.

Design note
-----------
Felix does not parse rules (their text does not round-trip through the kernel reliably, and the
format moves between iptables versions): it reads back only the ``cali:<hash>`` comment it wrote on
each of its rules, as Calico does. For every chain the parser keeps the list of hashes in order,
with ``""`` for a rule that carries none (someone else's). For chains outside ``cali-`` it also
keeps the full lines, because felix must delete a misplaced hook rule *by value* (a rule number
could shift under a concurrent writer) and must know which of its chains foreign rules jump to
(those cannot be deleted). The input is whatever other programs put in the tables, so the parser
takes any text: lines it does not understand are skipped, never fatal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .names import CHAIN_PREFIX, HASH_PREFIX

__all__ = ["KernelTable", "SaveError", "parse_save"]

_HASH = re.compile(r'--comment "?' + re.escape(HASH_PREFIX) + r"([A-Za-z0-9_-]+)")
# iptables-nft cannot show a table that native nft rules made incompatible; it says so and exits 0.
_INCOMPATIBLE = re.compile(r"^# Table .* is incompatible")


class SaveError(ValueError):
    pass


@dataclass(slots=True)
class KernelTable:
    """One table as felix believes the kernel holds it."""

    chains: dict[str, list[str]] = field(default_factory=dict)  # chain -> hash per rule ("" = not ours)
    lines: dict[str, list[str]] = field(default_factory=dict)  # non-cali chain -> its "-A" lines

    def copy(self) -> KernelTable:
        return KernelTable({k: list(v) for k, v in self.chains.items()}, {k: list(v) for k, v in self.lines.items()})

    def ours(self) -> list[str]:
        return [c for c in self.chains if c.startswith(CHAIN_PREFIX)]


def rule_hash_of(line: str) -> str:
    m = _HASH.search(line)
    return m.group(1) if m else ""


def parse_save(text: str) -> dict[str, KernelTable]:
    """``iptables-save`` output -> table name -> ``KernelTable``."""
    tables: dict[str, KernelTable] = {}
    current: KernelTable | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line[0] == "#":
            if _INCOMPATIBLE.match(line):
                raise SaveError(line.lstrip("# "))
            continue
        if line[0] == "*":
            current = tables.setdefault(line[1:].strip(), KernelTable())
            continue
        if current is None:
            continue
        if line[0] == ":":
            name = line[1:].split(" ", 1)[0]
            if name:
                current.chains.setdefault(name, [])
                if not name.startswith(CHAIN_PREFIX):
                    current.lines.setdefault(name, [])
            continue
        if line.startswith("-A "):
            parts = line.split(" ", 2)  # a rule with no match and no target is just "-A <chain>"
            if not parts[1]:
                continue
            name = parts[1]
            current.chains.setdefault(name, []).append(rule_hash_of(line))
            if not name.startswith(CHAIN_PREFIX):
                current.lines.setdefault(name, []).append(line)
    return tables
