"""llama-swap's swap matrix, answer for answer.

The cases restate llama-swap's own tests (``internal/matrix/dsl_test.go``,
``internal/config/matrix_test.go``, ``internal/router/matrix_test.go``) and the examples of
its ``config.example.yaml``, in this project's terms: the same expressions, running sets and
costs must give the same sets, evictions and errors.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from llamaswap_docker.config import load_config_text
from llamaswap_docker.config.matrix import (
    MatrixError,
    Program,
    _Evaluator,
    _flatten,
    compile_matrix,
    tokenize,
)
from llamaswap_docker.errors import ConfigError


def identity(models: list[str]) -> Any:
    known = set(models)
    return lambda name: name if name in known else None


def program(sets: list[tuple[str, str]], models: list[str]) -> Program:
    return compile_matrix(sets, identity(models))


def projected(prog: Program, set_name: str, relevant: list[str]) -> list[list[str]]:
    """The combinations a set offers, seen from ``relevant`` (dominated ones dropped)."""
    evaluator = _Evaluator(relevant)
    [chosen] = [s for s in prog.sets if s.name == set_name]
    return [list(_flatten(witness)) for _, witness in evaluator.evaluate(chosen.root)]


# -- the language ------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "tokens"), [
    ("abc", [("ident", "abc"), ("eof", "")]),
    ("model-name.v2", [("ident", "model-name.v2"), ("eof", "")]),
    ("(a | +base) & b", [("(", "("), ("ident", "a"), ("|", "|"), ("+", "base"), (")", ")"),
                         ("&", "&"), ("ident", "b"), ("eof", "")]),
])
def test_tokens(text: str, tokens: list[tuple[str, str]]) -> None:
    assert [(t.kind, t.value) for t in tokenize(text)] == tokens


@pytest.mark.parametrize(("text", "message"), [
    ("+", "expected set name after '+'"),
    ("a @ b", "unexpected character"),
])
def test_bad_tokens(text: str, message: str) -> None:
    with pytest.raises(MatrixError, match=re.escape(message)):
        tokenize(text)


@pytest.mark.parametrize(("dsl", "relevant", "sets"), [
    ("a", ["a"], [["a"]]),
    ("a & b", ["a", "b"], [["a", "b"]]),
    ("a | b | c", ["a", "b", "c"], [["a"], ["b"], ["c"]]),
    ("(a | b) & (c | d)", ["a", "b", "c", "d"], [["a", "c"], ["a", "d"], ["b", "c"], ["b", "d"]]),
    ("a | b & c", ["a", "b", "c"], [["a"], ["b", "c"]]),  # & binds tighter than |
    ("a & a", ["a"], [["a"]]),
])
def test_an_expression_offers_its_combinations(dsl: str, relevant: list[str],
                                               sets: list[list[str]]) -> None:
    assert projected(program([("test", dsl)], relevant), "test", relevant) == sets


def test_references_inline_other_sets() -> None:
    models = ["g", "q", "m", "v", "e"]
    prog = program([("llms", "g | q | m"), ("with_tts", "+llms & v"), ("mega", "+with_tts & e")],
                   models)
    assert projected(prog, "mega", models) == [["e", "g", "v"], ["e", "q", "v"], ["e", "m", "v"]]


def test_overlapping_references_keep_everything_running() -> None:
    prog = program([("base", "a & b"), ("extended", "target & +base & b")], ["target", "a", "b"])
    decision = prog.solve("target", ["a", "b"])
    assert decision.evict == () and decision.target_set == ("a", "b", "target")


@pytest.mark.parametrize(("sets", "message"), [
    ([("s", "")], "empty DSL expression"),
    ([("s", "(a")], "missing closing parenthesis"),
    ([("s", "a)")], "unexpected token"),
    ([("s", "()")], "unexpected token"),
    ([("s", "missing")], "unknown var or model"),
    ([("s", "+missing")], "references undefined set"),
    ([("a", "+b"), ("b", "+a")], "circular reference"),
])
def test_sets_that_do_not_compile(sets: list[tuple[str, str]], message: str) -> None:
    with pytest.raises(MatrixError, match=re.escape(message)):
        program(sets, ["a"])


def test_a_large_product_is_solved_without_expanding_it() -> None:
    dimensions, choices = 6, 10  # a million combinations
    groups = ["(" + " | ".join(f"model-{d}-{c}" for c in range(choices)) + ")"
              for d in range(dimensions)]
    models = ["target"] + [f"model-{d}-{c}" for d in range(dimensions) for c in range(choices)]
    prog = program([("large", "target & " + " & ".join(groups))], models)
    running = [f"model-{d}-9" for d in range(dimensions)] + ["outside"]
    decision = prog.solve("target", running)
    assert decision.evict == ("outside",) and decision.set_name == "large"
    assert len(decision.target_set) == dimensions + 1


def test_more_than_64_relevant_models() -> None:
    models = ["target"] + [f"model-{i}" for i in range(70)]
    prog = program([("wide", " & ".join(models))], models)
    decision = prog.solve("target", [*models[1:], "outside"])
    assert decision.evict == ("outside",) and len(decision.target_set) == 71


def test_a_dominated_combination_is_never_chosen() -> None:
    prog = program([("preferred", "target & (a | (a & b))")], ["target", "a", "b"])
    decision = prog.solve("target", ["a", "b"])
    assert decision.evict == () and decision.target_set == ("a", "b", "target")


def test_a_model_in_no_set_runs_alone() -> None:
    prog = program([("known", "a & b")], ["a", "b"])
    decision = prog.solve("missing", ["a", "b"])
    assert decision.evict == ("a", "b") and decision.target_set == ("missing",)
    assert decision.set_name == ""


def test_equal_costs_go_to_the_set_defined_first() -> None:
    prog = program([("first", "a & b"), ("second", "a & c")], ["a", "b", "c"])
    assert prog.solve("a", []).set_name == "first"


def test_evict_costs_keep_the_expensive_model() -> None:
    prog = program([("a_with_c", "a & c"), ("a_with_b", "a & b")], ["a", "b", "c"])
    decision = prog.solve("a", ["b", "c"], {"b": 10, "c": 1})
    assert decision.set_name == "a_with_b" and decision.evict == ("c",)


def test_a_running_target_needs_no_eviction() -> None:
    prog = program([("ab", "a & b")], ["a", "b"])
    decision = prog.solve("a", ["a", "b"])
    assert decision.evict == () and decision.set_name == "ab"
    assert prog.can_contain_all(["a", "b"]) and not prog.can_contain_all(["a", "c"])


# -- as a config -------------------------------------------------------------------------------

def config(matrix: str, models: str = "gemma qwen mistral voxtral llama70B", *,
           legacy: bool = True, extra: str = "") -> Any:
    entries = "\n".join(f"  {m}: {{image: x}}" for m in models.split())
    block = ("matrix:\n" + _indent(matrix, 2)) if legacy else (
        "routing:\n  router:\n    use: matrix\n    settings:\n      matrix:\n"
        + _indent(matrix, 8))
    return load_config_text(f"models:\n{entries}\n{block}\n{extra}")


def _indent(text: str, spaces: int) -> str:
    return "\n".join(" " * spaces + line for line in text.strip().splitlines())


def errors(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config_text(text)
    return str(caught.value)


def test_vars_costs_and_sets_resolve_to_models() -> None:
    c = config("""
vars: {g: gemma, q: qwen, m: mistral, v: voxtral, L: llama70B}
evict_costs: {L: 30, v: 50}
sets:
  standard: "(g | q | m) & v"
  full: "L"
""")
    prog, costs = c.matrix_program, c.evict_costs()
    assert costs == {"llama70B": 30, "voxtral": 50}
    decision = prog.solve("gemma", ["voxtral"], costs)
    assert (decision.set_name, decision.target_set, decision.evict) == (
        "standard", ("gemma", "voxtral"), ())
    decision = prog.solve("llama70B", ["voxtral"], costs)
    assert (decision.set_name, decision.target_set, decision.evict) == (
        "full", ("llama70B",), ("voxtral",))


def test_references_through_the_config() -> None:
    c = config("""
vars: {g: gemma, q: qwen, m: mistral, v: voxtral, e: reranker}
sets: {llms: "g | q | m", with_tts: "+llms & v", mega: "+with_tts & e"}
""", "gemma qwen mistral voxtral reranker", legacy=False)
    decision = c.matrix_program.solve("reranker", ["gemma", "voxtral"])
    assert (decision.set_name, decision.target_set, decision.evict) == (
        "mega", ("gemma", "reranker", "voxtral"), ())
    assert c.router == "matrix"


@pytest.mark.parametrize(("matrix", "target", "running", "target_set"), [
    ('sets: {combo: "gemma & voxtral"}', "gemma", ["voxtral"], ("gemma", "voxtral")),
    ('vars: {g: gemma}\nsets: {base: "g | qwen", combo: "+base & voxtral"}', "qwen",
     ["voxtral"], ("qwen", "voxtral")),
    ('vars: {g: gemma}\nsets: {combo: "g & gemma"}', "gemma", [], ("gemma",)),
    ('vars: {qwen: gemma}\nsets: {combo: "qwen"}', "gemma", [], ("gemma",)),  # a var wins
])
def test_model_ids_and_vars_mix(matrix: str, target: str, running: list[str],
                                target_set: tuple[str, ...]) -> None:
    c = config(matrix, "gemma qwen voxtral")
    assert c.matrix_program.solve(target, running).target_set == target_set


@pytest.mark.parametrize("key", ["abcdefghijklmnopqrstuvwxyzABCDEF", "model-var", "model.var"])
def test_var_keys_that_are_valid(key: str) -> None:
    config(f'vars: {{"{key}": gemma}}\nsets: {{s: "{key}"}}', "gemma")


@pytest.mark.parametrize(("key", "message"), [
    ("abcdefghijklmnopqrstuvwxyzABCDEFG", "1-32 characters"),
    ("a_b", "only alphanumeric, '-' or '.'"),
    ("", "1-32 characters"),
])
def test_var_keys_that_are_not(key: str, message: str) -> None:
    text = f'models: {{gemma: {{image: x}}}}\nmatrix: {{vars: {{"{key}": gemma}}, sets: {{s: gemma}}}}'
    assert message in errors(text)


@pytest.mark.parametrize(("matrix", "message"), [
    ('vars: {x: nonexistent}\nsets: {s: x}', "references unknown model 'nonexistent'"),
    ('vars: {g: gemma}\nevict_costs: {g: 0}\nsets: {s: g}', "positive integer, got 0"),
    ('vars: {g: gemma}\nevict_costs: {g: -1}\nsets: {s: g}', "positive integer, got -1"),
    ('vars: {g: gemma}\nevict_costs: {unknown: 5}\nsets: {s: g}', "unknown var or model 'unknown'"),
    ('vars: {g: gemma}\nsets: {a: "+b", b: "+a"}', "circular reference"),
    ('vars: {g: gemma}\nsets: {a: "+nonexistent"}', "references undefined set"),
    ('sets: {}', "sets"),
    ('vars: {g: gemma}\nsets: {s: "g & nonexistent"}', "unknown var or model 'nonexistent'"),
])
def test_matrices_that_do_not_load(matrix: str, message: str) -> None:
    text = "models: {gemma: {image: x}}\nmatrix:\n" + _indent(matrix, 2)
    assert message in errors(text)


def test_errors_name_the_line_of_the_set() -> None:
    text = "models: {gemma: {image: x}}\nmatrix:\n  sets:\n    ok: gemma\n    bad: \"gemma &\"\n"
    assert "<string>:5: matrix.sets.bad: set 'bad': parse: unexpected token" in errors(text)


def test_a_model_id_in_evict_costs_needs_no_var() -> None:
    assert config('evict_costs: {gemma: 5}\nsets: {s: gemma}', "gemma").evict_costs() == {"gemma": 5}


def test_groups_and_matrix_exclude_each_other() -> None:
    both = ("models: {model1: {image: x}}\ngroups: {group1: {members: [model1]}}\n"
            "matrix: {sets: {s: model1}}\n")
    assert "cannot use both 'groups' and 'matrix'" in errors(both)
    styles = ("models: {model1: {image: x}}\nmatrix: {sets: {s: model1}}\n"
              "routing: {router: {use: matrix, settings: {matrix: {sets: {s: model1}}}}}\n")
    assert "both the legacy top-level 'groups'/'matrix' keys and 'routing.router'" in errors(styles)
    unset = "models: {model1: {image: x}}\nrouting: {router: {use: matrix}}\n"
    assert "routing.router.use is 'matrix' but routing.router.settings.matrix is not set" in (
        errors(unset))


def test_a_legacy_matrix_selects_the_matrix_router_and_no_groups() -> None:
    c = config('vars: {g: gemma, q: qwen}\nsets: {combo: "g | q"}', "gemma qwen")
    assert c.router == "matrix" and c.matrix_program is not None and c.swap_groups == {}


def test_a_matrix_under_the_group_router_is_not_used() -> None:
    c = load_config_text("""
models: {a: {image: x}, b: {image: x}}
routing:
  router:
    use: group
    settings:
      groups: {g: {members: [a, b], swap: false}}
      matrix: {sets: {s: "a"}}
""")
    assert c.router == "group" and c.matrix_program is None and list(c.swap_groups) == ["g"]


# -- config.example.yaml's matrix ----------------------------------------------------------------

EXAMPLE = """
vars: {g: gemma-model, q: qwen-model, m: mistral-model, v: voxtral-model, e: reranker-model}
evict_costs: {v: 50, llama-70B: 30}
sets:
  standard: "(g | qwen-model | m) & v"
  with_rerank: "(g | q) & v & e"
  creative: "(g | q) & stable-diffusion"
  full: "llama-70B"
"""
EXAMPLE_MODELS = ("gemma-model qwen-model mistral-model voxtral-model reranker-model "
                  "stable-diffusion llama-70B")


@pytest.mark.parametrize(("target", "running", "chosen", "evict"), [
    ("reranker-model", ["gemma-model", "voxtral-model"], "with_rerank", ()),
    ("mistral-model", ["gemma-model", "voxtral-model"], "standard", ("gemma-model",)),
    ("stable-diffusion", ["qwen-model", "voxtral-model", "reranker-model"], "creative",
     ("voxtral-model", "reranker-model")),
    ("llama-70B", ["gemma-model", "voxtral-model"], "full", ("gemma-model", "voxtral-model")),
    ("gemma-model", ["llama-70B"], "standard", ("llama-70B",)),
    ("voxtral-model", ["stable-diffusion", "qwen-model"], "standard", ("stable-diffusion",)),
])
def test_the_example_matrix(target: str, running: list[str], chosen: str,
                            evict: tuple[str, ...]) -> None:
    c = config(EXAMPLE, EXAMPLE_MODELS)
    decision = c.matrix_program.solve(target, running, c.evict_costs())
    assert (decision.set_name, decision.evict) == (chosen, evict)
