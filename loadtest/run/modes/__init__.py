"""The modes of `loadtest run`, by name: what serves the agents and what the agents are.

`typha`: real typha replicas and protocol agents; `direct`: agents that list and watch the API
server themselves. `--mode both` runs typha, then direct, on the same cluster and churn. `typha-tls`
is typha with mutual TLS between the replicas and the agents (`--tls both` runs it after `typha`).
"""

from __future__ import annotations

from .base import ModeError, ModeRun
from .direct import DirectRun
from .typha import TyphaRun, TyphaTlsRun

MODES: dict[str, type[ModeRun]] = {"typha": TyphaRun, "typha-tls": TyphaTlsRun, "direct": DirectRun}

__all__ = ["MODES", "DirectRun", "ModeError", "ModeRun", "TyphaRun", "TyphaTlsRun"]
