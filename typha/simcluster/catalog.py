"""What the synthetic cluster's workloads look like: app names, label vocabularies, policy templates.

Plain data and pure functions, so the shape of a generated cluster can be read (and changed) in one
place, apart from the bookkeeping that allocates and churns it.
"""

from __future__ import annotations

from .records import App, Namespace

APP_WORDS = (
    "web",
    "api",
    "cart",
    "auth",
    "search",
    "db",
    "cache",
    "queue",
    "worker",
    "billing",
    "ledger",
    "mailer",
    "report",
    "gateway",
    "frontend",
    "checkout",
    "catalog",
    "media",
)
TIERS = {"web": "frontend", "frontend": "frontend", "gateway": "frontend", "db": "db", "cache": "db", "ledger": "db"}
TEAMS = ("payments", "search", "platform", "growth", "data")
ENVS = ("prod", "staging", "dev")
FIXED_NAMESPACES = ("default", "kube-system")

K8S_POLICY_NAMES = (
    "default-deny-ingress",
    "allow-peer-app",
    "allow-team-backends",
    "allow-partner-https",
    "allow-dns-egress",
    "db-egress",
)


def global_policy(i: int) -> tuple[str, dict]:
    """Name and spec of the ``i``-th GlobalNetworkPolicy (templates repeat with a numbered name)."""
    templates: list[tuple[str, dict]] = [
        (
            "allow-cluster-dns",
            {
                "order": 100,
                "selector": "all()",
                "types": ["Egress"],
                "egress": [
                    {
                        "action": "Allow",
                        "protocol": "UDP",
                        "destination": {
                            "selector": "k8s-app == 'kube-dns'",
                            "namespaceSelector": "projectcalico.org/name == 'kube-system'",
                            "ports": [53],
                        },
                    },
                    {"action": "Pass"},
                ],
            },
        ),
        (
            "deny-cloud-metadata",
            {
                "order": 10,
                "selector": "projectcalico.org/orchestrator == 'k8s'",
                "types": ["Egress"],
                "egress": [{"action": "Deny", "destination": {"nets": ["169.254.169.254/32"]}}, {"action": "Pass"}],
            },
        ),
        (
            "ops-ssh",
            {
                "order": 50,
                "selector": "has(kubernetes.io/hostname)",
                "types": ["Ingress"],
                "ingress": [
                    {
                        "action": "Allow",
                        "protocol": "TCP",
                        "source": {"nets": ["198.51.100.0/24"]},
                        "destination": {"ports": [22]},
                    }
                ],
            },
        ),
        (
            "log-dev",
            {
                "selector": "env == 'dev'",
                "namespaceSelector": "env == 'dev'",
                "types": ["Ingress"],
                "ingress": [{"action": "Log"}],
            },
        ),
    ]
    name, spec = templates[i % len(templates)]
    if i >= len(templates):
        name = f"{name}-{i}"
    return name, spec


def k8s_policy_spec(ns: Namespace, kind: int, variant: int) -> dict:
    """The spec of a Kubernetes NetworkPolicy of ``kind`` (an index of K8S_POLICY_NAMES); ``variant`` varies it."""
    apps: list[App | None] = [*ns.apps] if ns.apps else [None]
    a = apps[variant % len(apps)]
    b = apps[(variant + 1) % len(apps)]
    app_a = a.name if a else "web"
    app_b = b.name if b else "web"
    port = 8080 + variant % 7
    if kind == 0:
        return {"podSelector": {}, "policyTypes": ["Ingress"]}
    if kind == 1:
        return {
            "podSelector": {"matchLabels": {"app": app_a}},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [{"podSelector": {"matchLabels": {"app": app_b}}}],
                    "ports": [{"protocol": "TCP", "port": port}],
                }
            ],
        }
    if kind == 2:
        return {
            "podSelector": {"matchLabels": {"tier": "backend"}},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [
                        {
                            "namespaceSelector": {"matchLabels": {"team": TEAMS[variant % 5]}},
                            "podSelector": {
                                "matchExpressions": [
                                    {"key": "tier", "operator": "In", "values": ["frontend", "backend"]}
                                ]
                            },
                        }
                    ],
                    "ports": [{"port": "http"}],
                }
            ],
        }
    if kind == 3:
        return {
            "podSelector": {"matchLabels": {"app": app_a}},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [{"ipBlock": {"cidr": "203.0.113.0/24", "except": ["203.0.113.128/25"]}}],
                    "ports": [
                        {"protocol": "TCP", "port": 443},
                        {"protocol": "TCP", "port": port, "endPort": port + 10},
                    ],
                }
            ],
        }
    if kind == 4:
        return {
            "podSelector": {},
            "policyTypes": ["Egress"],
            "egress": [
                {
                    "to": [
                        {
                            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                        }
                    ],
                    "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
                }
            ],
        }
    return {
        "podSelector": {"matchLabels": {"app": app_a}},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [{}],
        "egress": [
            {
                "to": [{"podSelector": {"matchLabels": {"tier": "db"}}}],
                "ports": [{"protocol": "TCP", "port": 5432 + variant % 3}],
            }
        ],
    }
