"""Kernel names for felix's chains and ip sets, and the hash that tags every rule felix writes.

Design note
-----------
Everything felix owns in iptables is recognisable by name alone: chains start with ``cali-`` and ip
sets with ``cali4``/``cali6``, as in Calico, so a read-back (``iptables-save``, ``ipset save``)
can tell ours from everyone else's without remembering anything, and a restarted felix adopts (or
removes) what an earlier run left.

Names are deterministic functions of the ids the calculation hands us, bounded by the kernel's
limits (a chain name holds 28 characters, an ip set name 31). A name that fits and uses only plain
characters is kept readable (``cali-tw-cali1234567890a``, ``cali-pri-kns.default``); anything
longer or odder is replaced by ``_`` and a truncated SHA-256 of the id, as Calico does, so two ids
never share a chain and a long id never produces an invalid name. Ip set ids are always hashed
(``cali40s:`` + 23 characters of SHA-224): the calculation's ids are long, readable strings, and a
fixed-width name makes every set name the same length in the rules.

Rule hashes. Each rule carries ``-m comment --comment "cali:<hash>"`` where the hash is 16
characters of URL-safe base64 of SHA-224 over the chain name and the rule text. Calico chains each
hash into the next (so a rule's position changes its hash) and compares hash lists position by
position; we hash rules independently and compare the lists as sequences (see ``plan``), so
inserting one interface into a dispatch chain costs one ``-I`` instead of rewriting every rule
after it, while a moved or edited rule is still detected because the sequence differs.
"""

from __future__ import annotations

import binascii
import hashlib
import re

__all__ = [
    "CHAIN_FORWARD",
    "CHAIN_FROM_WL_DISPATCH",
    "CHAIN_INPUT",
    "CHAIN_NAT_OUTGOING",
    "CHAIN_NAT_POSTROUTING",
    "CHAIN_OUTPUT",
    "CHAIN_PREFIX",
    "CHAIN_TO_WL_DISPATCH",
    "CHAIN_WL_TO_HOST",
    "HASH_PREFIX",
    "MAX_CHAIN_NAME",
    "MAX_SET_NAME",
    "SET_ALL_POOLS",
    "SET_MASQ_POOLS",
    "endpoint_chain_name",
    "limited_name",
    "owns_set",
    "policy_chain_name",
    "profile_chain_name",
    "rule_hash",
    "set_name",
    "temp_set_name",
]

CHAIN_PREFIX = "cali-"
MAX_CHAIN_NAME = 28  # XT_EXTENSION_MAXNAMELEN - 1
MAX_SET_NAME = 31  # IPSET_MAXNAMELEN - 1
HASH_PREFIX = "cali:"
HASH_LEN = 16  # 96 bits: collision-resistant, short enough to keep rules readable
_HASH_BYTES = HASH_LEN * 3 // 4  # base64 of 12 bytes is exactly 16 characters

CHAIN_FORWARD = "cali-FORWARD"
CHAIN_INPUT = "cali-INPUT"
CHAIN_OUTPUT = "cali-OUTPUT"
CHAIN_WL_TO_HOST = "cali-wl-to-host"
CHAIN_FROM_WL_DISPATCH = "cali-from-wl-dispatch"
CHAIN_TO_WL_DISPATCH = "cali-to-wl-dispatch"
CHAIN_NAT_POSTROUTING = "cali-POSTROUTING"
CHAIN_NAT_OUTGOING = "cali-nat-outgoing"

PFX_TO_WL = "cali-tw-"
PFX_FROM_WL = "cali-fw-"
PFX_POLICY_IN = "cali-pi-"
PFX_POLICY_OUT = "cali-po-"
PFX_PROFILE_IN = "cali-pri-"
PFX_PROFILE_OUT = "cali-pro-"

# Ip set ids of felix's own sets (not the calculation's): every pool, and pools with natOutgoing.
SET_ALL_POOLS = "all-ipam-pools"
SET_MASQ_POOLS = "masq-ipam-pools"
_INTERNAL_SETS = (SET_ALL_POOLS, SET_MASQ_POOLS)

_PLAIN = re.compile(r"[A-Za-z0-9_.-]+")
_SHORTENED = "_"


_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _b64(digest: bytes) -> str:
    """URL-safe base64 without padding (``binascii`` directly: ``base64``'s wrappers cost more
    than the hashing, and every rule felix renders is hashed)."""
    return binascii.b2a_base64(digest, newline=False).translate(_URLSAFE).decode().rstrip("=")


def limited_name(prefix: str, suffix: str, max_len: int = MAX_CHAIN_NAME) -> str:
    """``prefix + suffix`` if it fits and is plain, else ``prefix + "_" + hash(suffix)`` cut to fit.

    A plain suffix never starts with ``_``, so a hashed name can never equal a readable one.
    """
    if (
        suffix
        and len(prefix) + len(suffix) <= max_len
        and _PLAIN.fullmatch(suffix)
        and not suffix.startswith(_SHORTENED)
    ):
        return prefix + suffix
    room = max_len - len(prefix) - len(_SHORTENED)
    if room < 4:
        raise ValueError(f"prefix {prefix!r} leaves no room for a hash within {max_len} characters")
    return prefix + _SHORTENED + _b64(hashlib.sha256(suffix.encode()).digest())[:room]


def endpoint_chain_name(ingress: bool, iface: str) -> str:
    """``cali-tw-<iface>`` (traffic to the workload) or ``cali-fw-<iface>`` (from it)."""
    return limited_name(PFX_TO_WL if ingress else PFX_FROM_WL, iface)


def policy_chain_name(ingress: bool, tier: str, name: str) -> str:
    return limited_name(PFX_POLICY_IN if ingress else PFX_POLICY_OUT, f"{tier}/{name}")


def profile_chain_name(ingress: bool, profile_id: str) -> str:
    return limited_name(PFX_PROFILE_IN if ingress else PFX_PROFILE_OUT, profile_id)


def set_name(version: int, set_id: str, named_port: bool = False) -> str:
    """Kernel name of the calculation's set ``set_id`` for IPv``version``: ``cali40s:<hash>``.

    ``n:`` instead of ``s:`` for ``hash:ip,port`` sets, so a set whose type changes gets a new name
    (the kernel cannot swap sets of different types).
    """
    if set_id in _INTERNAL_SETS:
        return f"cali{version}0{set_id}"
    token = "n:" if named_port else "s:"
    prefix = f"cali{version}0{token}"
    return prefix + _b64(hashlib.sha224(set_id.encode()).digest())[: MAX_SET_NAME - len(prefix)]


def temp_set_name(version: int, n: int) -> str:
    """Scratch sets for rewrite-and-swap: ``cali4t0``, ``cali4t1``, ..."""
    return f"cali{version}t{n}"


def owns_set(name: str) -> bool:
    return name.startswith(("cali4", "cali6"))


def rule_hash(chain: str, rule: str) -> str:
    """The 16-character tag of ``rule`` (the text after ``-A <chain>``) in ``chain``."""
    return _b64(hashlib.sha224(f"{chain}\0{rule}".encode()).digest()[:_HASH_BYTES])
