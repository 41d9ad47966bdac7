import random

import pytest

from mpdistill.tasks import chain, get_task
from mpdistill.tasks.problems import chain_problems


def test_value_and_routes_agree():
    p = chain.ChainProblem(digits=(7, 3, 5, 9, 2), signs=("+", "-", "+", "-"))
    assert p.text == "7+3-5+9-2" and p.answer == "2"
    assert chain.concise_trace(p, "L") == "7+3=0\n0-5=5\n5+9=4\n4-2=2\nA:2"
    assert chain.concise_trace(p, "P") == "7+3=0\n0+9=9\n9-5=4\n4-2=2\nA:2"
    for route in chain.ROUTES:
        assert chain.route_of(chain.concise_trace(p, route), p) == route


def test_verbose_traces_are_longer_and_keep_route_and_answer():
    rng = random.Random(0)
    for _ in range(200):
        p = chain.sample_problem(rng)
        route = rng.choice(chain.ROUTES)
        v = chain.verbose_trace(p, route, rng)
        assert chain.extract_answer(v) == p.answer
        assert len(v) > len(chain.concise_trace(p, route))
        # A backtracked line ends in "wait no" and is not a step, so the route still reads off.
        expected = "L" if chain.concise_trace(p, "L") == chain.concise_trace(p, "P") else route
        assert chain.route_of(v, p) == expected


def test_parse_round_trip_and_errors():
    p = chain.ChainProblem.parse("Q:1+2-3\n")
    assert p.prompt == "Q:1+2-3\n" and p.answer == "0"
    with pytest.raises(ValueError, match="not a chain problem"):
        chain.ChainProblem.parse("Q:12+3")


def test_splits_are_disjoint_and_held_out_sets_reproducible():
    train = chain_problems(300, seed=1, split="train")
    held = chain_problems(300, seed=1, split="eval")
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held}
    assert held == chain_problems(300, seed=1, split="eval")
    assert all(chain.split_of(chain.ChainProblem.parse(r["prompt"])) == "eval" for r in held)


def test_extract_takes_last_answer_only():
    assert chain.extract_answer("A:3\nno wait\nA:4") == "4"
    assert chain.extract_answer("the answer is 4") is None
    task = get_task("chain")
    assert task.is_correct("7+3=0\nA:0", "0") and not task.is_correct("A:1", "0")
    with pytest.raises(ValueError, match="unknown task .nope.; known: chain, math"):
        get_task("nope")


def test_route_kept_tells_the_two_routes_apart():
    from mpdistill.tasks.chain import ChainProblem, route_kept

    problem = ChainProblem.parse("Q:7+3-5+9-2")
    concise = {r: "\n".join(f"{a}{s}{d}={b}" for a, s, d, b in problem.steps(r)) + "\nA:2" for r in ("L", "P")}
    verbose_l = ("Q:7+3-5+9-2 so we start at 7\n7+3=0 check 0-3=7 ok\n0-5=5\n5+9=3 wait no\n5+9=4\n"
                 "so far 4\n4-2=2\nso the answer is 2\nA:2")
    assert route_kept(verbose_l, concise["L"])  # the re-check and the abandoned step are extra, not missing
    assert not route_kept(verbose_l, concise["P"])  # 0+9=9 was never the student's step
    assert route_kept(verbose_l, "A:2")  # no step written: nothing departs from the route


def test_numbers_kept_is_the_math_route_proxy():
    from mpdistill.tasks.math import numbers_kept

    student = "First, 12 * 3 = 36 apples. Let me check: 36 / 3 = 12. Then 36 + 1,200 = 1,236. \\boxed{1236}"
    assert numbers_kept(student, "12 * 3 = 36; 36 + 1200 = 1236. \\boxed{1236}")
    assert not numbers_kept(student, "1200 + 12 * 3 = 1236, via 1212. \\boxed{1236}")  # other order, new number
