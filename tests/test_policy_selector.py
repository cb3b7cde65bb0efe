"""felix.policy.selector: Calico's selector grammar, semantics, canonical form and restrictions."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from felix.policy.selector import MAX_SELECTOR_LENGTH, SelectorError, parse

L = {"app": "web", "tier": "front-end", "env": "prod", "quote": 'say "hi"', "empty": ""}


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("", True),
        ("all()", True),
        ("global()", True),  # in a plain selector; typha rewrote the namespace-selector meaning
        ("app == 'web'", True),
        ('app == "web"', True),
        ("app == 'db'", False),
        ("missing == 'x'", False),
        ("app != 'db'", True),
        ("app != 'web'", False),
        ("missing != 'x'", True),  # absent counts as "not equal"
        ("empty == ''", True),
        ("has(app)", True),
        ("has( app )", True),
        ("!has(app)", False),
        ("! has(missing)", True),
        ("has(empty)", True),
        ("app in {'web', 'db'}", True),
        ("app in {'db'}", False),
        ("app in {}", False),
        ("missing in {'x'}", False),
        ("app not in {'db'}", True),
        ("app not in {'web','db'}", False),
        ("missing not in {'x'}", True),
        ("app not in {}", True),
        ("tier contains 'nt-e'", True),
        ("tier contains 'back'", False),
        ("missing contains ''", False),
        ("tier starts with 'front'", True),
        ("tier starts with 'end'", False),
        ("tier ends with 'end'", True),
        ("tier ends with 'front'", False),
        ("quote contains '\"hi\"'", True),
        ("app == 'web' && env == 'prod'", True),
        ("app == 'web' && env == 'dev'", False),
        ("app == 'db' || env == 'prod'", True),
        ("app == 'db' || env == 'dev'", False),
        # && binds tighter than ||; ! tighter than &&
        ("app == 'db' && env == 'dev' || has(app)", True),
        ("app == 'db' && (env == 'dev' || has(app))", False),
        ("!app == 'db' && env == 'prod'", True),
        ("!(app == 'web' && env == 'prod')", False),
        ("!!has(app)", True),
        ("!!!has(app)", False),
        ("((app == 'web'))", True),
        ("\tapp\t==\t'web'\t", True),
        ("k8s-app.example.com/name_x == 'v'", False),
    ],
)
def test_semantics(selector: str, expected: bool) -> None:
    assert parse(selector).matches(L) is expected


@pytest.mark.parametrize(
    ("selector", "pos", "problem"),
    [
        ("app = 'web'", 4, "expected '=='"),
        ("app ==", 6, "expected a quoted string"),
        ("app == web", 7, "expected a quoted string"),
        ("app == 'web", 7, "unterminated string"),
        ("(app == 'web'", 13, "expected ')'"),
        ("app == 'web')", 12, "unexpected content after the end"),
        ("app == 'a' & b == 'c'", 11, "expected '&&'"),
        ("app == 'a' | b == 'c'", 11, "expected '||'"),
        ("app in {'a' 'b'}", 12, "expected '}'"),
        ("app in 'a'", 7, "expected '{'"),
        ("app is 'a'", 4, "expected an operator after label 'app'"),
        ("app starts 'a'", 11, "expected 'starts with'"),
        ("has(app", 7, "expected ')'"),
        ("has()", 4, "expected a label name"),
        ("has (app)", 4, "expected an operator after label 'has'"),
        ("all(x)", 4, "expected ')'"),
        ("&& app == 'a'", 0, "unexpected '&&'"),
        ("app == 'a' &&", 13, "unexpected end of selector"),
        ("!", 1, "unexpected end of selector"),
        ("app == 'a' # comment", 11, "unexpected character '#'"),
        ("app\n== 'a'", 3, "expected an operator"),  # Calico's whitespace is spaces and tabs only
        ("(" * 101 + "has(a)" + ")" * 101, 100, "nested deeper than 100"),
        ("a" * 513 + " == 'x'", 0, "longer than 512"),
    ],
)
def test_errors_name_the_position_and_the_problem(selector: str, pos: int, problem: str) -> None:
    with pytest.raises(SelectorError) as info:
        parse(selector)
    assert info.value.pos == pos, str(info.value)
    assert problem in info.value.problem
    assert "bad selector" in str(info.value)


def test_oversized_and_non_string_input_are_errors() -> None:
    with pytest.raises(SelectorError, match="longer than"):
        parse("has(a) && " * (MAX_SELECTOR_LENGTH // 10 + 1) + "has(b)")
    with pytest.raises(SelectorError, match="not a string"):
        parse(42)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("a == 'x' && b == 'y'", "b == \"y\" && a == 'x'"),
        ("a == 'x' && b == 'y' && a == 'x'", "(b == 'y') && (a == 'x')"),
        ("(a == 'x' && b == 'y') && c == 'z'", "a == 'x' && (b == 'y' && c == 'z')"),
        ("a == 'x' || b == 'y'", "b == 'y' || a == 'x'"),
        ("a in {'y', 'x', 'x'}", "a in {'x','y'}"),
        ("a in {'x'}", "a == 'x'"),
        ("a not in {'x'}", "a != 'x'"),
        ("!!has(a)", "has(a)"),
        ("has(a) && all()", "has(a)"),
        ("", "all()"),
        ("global()", "all()"),
        ("has(a) || all()", "all()"),
        ("a in {}", "!all()"),
        ("a in {} && has(b)", "!all()"),
        ("a in {} || has(b)", "has(b)"),
    ],
)
def test_equal_selectors_share_one_canonical_form(a: str, b: str) -> None:
    assert parse(a).canonical == parse(b).canonical
    assert parse(a) == parse(b) and hash(parse(a)) == hash(parse(b))


def test_canonical_form_quotes_values_containing_double_quotes_with_single_quotes() -> None:
    sel = parse("""a == 'say "hi"' && b in {'x"y', "z"}""")
    assert sel.canonical == """a == 'say "hi"' && b in {'x"y', "z"}"""
    assert parse(sel.canonical) == sel


def test_restrictions() -> None:
    assert parse("a == 'x' && has(b)").restrictions() == {"a": frozenset({"x"}), "b": None}
    assert parse("a in {'x', 'y'} && a == 'x'").restrictions() == {"a": frozenset({"x"})}
    assert parse("a == 'x' || a == 'y'").restrictions() == {"a": frozenset({"x", "y"})}
    assert parse("a == 'x' || has(a)").restrictions() == {"a": None}
    assert parse("a == 'x' || b == 'y'").restrictions() == {}
    assert parse("a != 'x' && !has(b) && a not in {'y', 'z'}").restrictions() == {}
    assert parse("a contains 'x' && b starts with 'y'").restrictions() == {"a": None, "b": None}
    assert parse("a == 'x' && a == 'y'").never
    assert parse("a in {}").never
    assert not parse("has(a)").never


# -- properties: canonical form round-trips and keeps meaning; restrictions are sound -------------

KEYS = ["a", "b", "c/d"]
VALUES = ["x", "y", "", 'q"', "xy"]


def _leaf() -> st.SearchStrategy[tuple[str, object]]:
    """(selector text, reference evaluator) pairs, the evaluator written independently of the parser."""
    key = st.sampled_from(KEYS)
    value = st.sampled_from(VALUES)

    def q(v: str) -> str:
        return f"'{v}'" if '"' in v else f'"{v}"'

    return st.one_of(
        st.just(("all()", lambda lab: True)),
        key.map(lambda k: (f"has({k})", lambda lab: k in lab)),
        st.tuples(key, value).map(lambda kv: (f"{kv[0]} == {q(kv[1])}", lambda lab: lab.get(kv[0]) == kv[1])),
        st.tuples(key, value).map(lambda kv: (f"{kv[0]} != {q(kv[1])}", lambda lab: lab.get(kv[0]) != kv[1])),
        st.tuples(key, value).map(
            lambda kv: (f"{kv[0]} contains {q(kv[1])}", lambda lab: kv[0] in lab and kv[1] in lab[kv[0]])
        ),
        st.tuples(key, value).map(
            lambda kv: (f"{kv[0]} starts with {q(kv[1])}", lambda lab: kv[0] in lab and lab[kv[0]].startswith(kv[1]))
        ),
        st.tuples(key, value).map(
            lambda kv: (f"{kv[0]} ends with {q(kv[1])}", lambda lab: kv[0] in lab and lab[kv[0]].endswith(kv[1]))
        ),
        st.tuples(key, st.lists(value, max_size=3)).map(
            lambda kv: (
                f"{kv[0]} in {{{', '.join(q(v) for v in kv[1])}}}",
                lambda lab: kv[0] in lab and lab[kv[0]] in kv[1],
            )
        ),
        st.tuples(key, st.lists(value, max_size=3)).map(
            lambda kv: (
                f"{kv[0]} not in {{{','.join(q(v) for v in kv[1])}}}",
                lambda lab: kv[0] not in lab or lab[kv[0]] not in kv[1],
            )
        ),
    )


def _tree(children: st.SearchStrategy[tuple[str, object]]) -> st.SearchStrategy[tuple[str, object]]:
    return st.one_of(
        children.map(lambda c: (f"!({c[0]})", lambda lab: not c[1](lab))),  # type: ignore[operator]
        st.tuples(children, children).map(
            lambda ab: (f"({ab[0][0]}) && ({ab[1][0]})", lambda lab: ab[0][1](lab) and ab[1][1](lab))  # type: ignore[operator]
        ),
        st.tuples(children, children).map(
            lambda ab: (f"({ab[0][0]}) || ({ab[1][0]})", lambda lab: ab[0][1](lab) or ab[1][1](lab))  # type: ignore[operator]
        ),
    )


SELECTORS = st.recursive(_leaf(), _tree, max_leaves=8)
LABELS = st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES), max_size=3)


@settings(max_examples=400, deadline=None)
@given(SELECTORS, st.lists(LABELS, min_size=1, max_size=6))
def test_evaluation_matches_a_reference_and_canonical_form_keeps_meaning(
    sel: tuple[str, object], label_sets: list[dict[str, str]]
) -> None:
    text, reference = sel
    parsed = parse(text)
    again = parse(parsed.canonical)
    assert again.canonical == parsed.canonical  # canonical form is a fixed point
    restr = parsed.restrictions()
    for labels in label_sets:
        expected = reference(labels)  # type: ignore[operator]
        assert parsed.matches(labels) is expected, (text, labels)
        assert again.matches(labels) is expected, (parsed.canonical, labels)
        if expected:  # sound: a matching item always carries the required labels
            for key, values in restr.items():
                assert key in labels and (values is None or labels[key] in values), (text, labels, restr)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab=!&|(){}, '\"\tinotcsh", max_size=40))
def test_arbitrary_text_parses_or_fails_cleanly(text: str) -> None:
    try:
        sel = parse(text)
    except SelectorError as e:
        assert 0 <= e.pos <= len(text)
    else:
        assert parse(sel.canonical) == sel


@pytest.mark.parametrize("n", [2, 3, 4, 5, 9, 3000])
def test_wide_and_or_evaluate_every_operand(n: int) -> None:
    """``&&``/``||`` of n operands compile to one closure (inline up to four): each operand counts."""
    every = parse(" && ".join(f"k{i} == 'v'" for i in range(n)))
    some = parse(" || ".join(f"k{i} == 'v'" for i in range(n)))
    full = {f"k{i}": "v" for i in range(n)}
    assert every.matches(full) is True and some.matches({}) is False
    for i in {0, 1, n // 2, n - 2, n - 1}:
        assert every.matches({k: v for k, v in full.items() if k != f"k{i}"}) is False
        assert some.matches({f"k{i}": "v"}) is True
