"""Calico selectors as agents evaluate them: label keys prefixed, Kubernetes label selectors translated.

Design note
-----------
Typha resolves every selector before it leaves: a namespace selector's keys become ``pcns.<key>``
(the labels of the namespace's profile), a service-account selector's ``pcsa.<key>``, and a rule's
namespace restriction is ANDed into its selector (Calico's v1 update processors do the same). An
agent then evaluates one selector against one label set and never needs the namespace a rule came
from. Rewriting works on tokens (quoted strings, operators, words), not on a parsed tree: typha only
renames keys and never evaluates a selector, and a tokenizer passes through syntax it does not know.
"""

from __future__ import annotations

import re
from typing import Any

from .calico import LABEL_NAMESPACE, LABEL_ORCHESTRATOR, LABEL_SERVICE_ACCOUNT, NS_LABEL_PREFIX, SA_LABEL_PREFIX
from .fields import ProjectionError, field_dict, field_list, str_map

# Quoted strings, two-char operators, single-char punctuation, then bare words (label keys,
# keywords, function names).  A trailing catch-all keeps unknown characters in place.
_SEL_TOKEN = re.compile(r"""\s+|'[^']*'|"[^"]*"|==|!=|&&|\|\||[!(){},]|[^\s'"=!&|(){},]+|.""")
_KEY_CONTEXT = {None, "(", "&&", "||", "!"}


def prefix_selector(selector: str, prefix: str, namespace_semantics: bool = False) -> str:
    """Prefix every label key of a Calico selector (``a == 'x'`` -> ``pcns.a == 'x'``).

    With ``namespace_semantics`` the special functions are rewritten the way Calico does for
    namespace selectors: ``all()`` -> every namespaced endpoint, ``global()`` -> none.
    """
    toks = _SEL_TOKEN.findall(selector)
    sig = [i for i, t in enumerate(toks) if not t.isspace()]
    out = list(toks)
    for n, i in enumerate(sig):
        t = toks[i]
        if t[0] in "'\"" or t in ("==", "!=", "&&", "||", "!", "(", ")", "{", "}", ","):
            continue
        nxt = toks[sig[n + 1]] if n + 1 < len(sig) else None
        prev = toks[sig[n - 1]] if n > 0 else None
        prev2 = toks[sig[n - 2]] if n > 1 else None
        if nxt == "(":
            if namespace_semantics and t in ("all", "global") and n + 2 < len(sig) and toks[sig[n + 2]] == ")":
                repl = f"has({LABEL_NAMESPACE})" if t == "all" else f"!has({LABEL_NAMESPACE})"
                out[i] = repl
                out[sig[n + 1]] = ""
                out[sig[n + 2]] = ""
            continue  # function name
        if (prev == "(" and prev2 == "has") or prev in _KEY_CONTEXT:
            out[i] = prefix + t
    return "".join(out)


def and_selectors(a: str, b: str) -> str:
    if not a:
        return b
    if not b:
        return a
    return f"({a}) && ({b})"


def k8s_selector(sel: Any, pod: bool, what: str = "selector") -> str:
    """A Kubernetes LabelSelector as Calico selector text (Calico's k8sSelectorToCalico).

    Pod selectors always carry ``projectcalico.org/orchestrator == 'k8s'``; an empty namespace
    selector means "all namespaces" (``all()``); a missing one means "no constraint" ("").
    """
    parts = [f"{LABEL_ORCHESTRATOR} == 'k8s'"] if pod else []
    if sel is None:
        return " && ".join(parts)
    sel = field_dict(sel, what)
    labels = str_map(sel.get("matchLabels"), f"{what}.matchLabels")
    exprs = field_list(sel.get("matchExpressions"), f"{what}.matchExpressions")
    if not pod and not labels and not exprs:
        return "all()"
    for k in sorted(labels):
        parts.append(f"{k} == '{labels[k]}'")
    for e in exprs:
        e = field_dict(e, f"{what}.matchExpressions[]")
        key, op = e.get("key"), e.get("operator")
        if not isinstance(key, str) or not key:
            raise ProjectionError(f"{what}: matchExpression without key")
        vals = "', '".join(str(v) for v in field_list(e.get("values"), f"{what}.values"))
        if op == "In":
            parts.append(f"{key} in {{ '{vals}' }}")
        elif op == "NotIn":
            parts.append(f"{key} not in {{ '{vals}' }}")
        elif op == "Exists":
            parts.append(f"has({key})")
        elif op == "DoesNotExist":
            parts.append(f"! has({key})")
        else:
            raise ProjectionError(f"{what}: unknown operator {op!r}")
    return " && ".join(parts)


def entity_selector(er: dict, ns: str | None) -> str:
    """One selector for everything an entity rule matches (Calico's getEndpointSelector)."""
    ns_sel_raw = er.get("namespaceSelector") or ""
    if ns_sel_raw:
        ns_sel = prefix_selector(ns_sel_raw, NS_LABEL_PREFIX, namespace_semantics=True)
    elif ns:
        ns_sel = f"{LABEL_NAMESPACE} == '{ns}'"
    else:
        ns_sel = ""
    sels = []
    sam = er.get("serviceAccounts")
    if sam:
        sam = field_dict(sam, "serviceAccounts")
        sa_sel = prefix_selector(sam["selector"], SA_LABEL_PREFIX) if sam.get("selector") else ""
        names = field_list(sam.get("names"), "serviceAccounts.names")
        if names:
            in_names = f"{LABEL_SERVICE_ACCOUNT} in {{ '" + "', '".join(names) + "' }"
            sa_sel = f"({sa_sel}) && ({in_names})" if sa_sel else in_names
        if sa_sel:
            sels.append(sa_sel)
    if er.get("selector"):
        sels.append(er["selector"])
    selector = sels[0] if len(sels) == 1 else ("(" + ") && (".join(sels) + ")" if sels else "")
    if ns_sel and (selector or er.get("notSelector") or ns_sel_raw):
        selector = f"({ns_sel}) && ({selector})" if selector else ns_sel
    return selector
