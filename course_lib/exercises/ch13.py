"""Chapter 13 (capstone): the checkers for its exercises.

* :func:`check_front_door` — the learner adds a component in front of the efficient system:
  a rule that answers some queries itself (or hands them on with :data:`DEFER`). The system
  with the rule must *beat the frontier*: at least as accurate as the system behind it, and no
  stored system at least as accurate at a cost per query at most as high.
* :func:`check_time_from_flops_prediction` — the learner predicts the monolith's time per
  query from the efficient system's measured time and the FLOPs ratio; the notebook measures it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from course_lib.exercises.core import CheckResult, ExerciseFailed, check_prediction, run_cases

#: what a front-door rule returns to hand a query on to the system behind it
DEFER = "<defer>"


@dataclass(frozen=True)
class FrontierTask:
    """The data :func:`check_front_door` scores a rule on.

    ``prompts`` and ``golds``: the held-out items; ``score(i, answer) -> bool`` the item's
    scoring rule; ``fallback`` the system a deferred query goes to, with its per-item
    outcome ``fallback_correct`` and cost ``fallback_cost`` (in ``cost_unit``);
    ``systems``: every stored system as ``name -> (accuracy, cost per query)``: the points
    the frontier is made of (the fallback among them). A query the rule answers itself costs
    ``rule_cost`` (a rule that reads the prompt and calls a calculator does no model FLOPs).
    """

    prompts: tuple[str, ...]
    golds: tuple[str, ...]
    fallback: str
    fallback_correct: tuple[bool, ...]
    fallback_cost: tuple[float, ...]
    systems: dict[str, tuple[float, float]]
    cost_unit: str = "FLOPs per query"
    rule_cost: float = 0.0
    score: Callable[[int, str], bool] | None = field(default=None, compare=False)

    def __post_init__(self):
        n = len(self.prompts)
        if n == 0:
            raise ValueError("prompts must hold at least one item, got none")
        for name in ("golds", "fallback_correct", "fallback_cost"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} must have one entry per prompt ({n}), got {len(getattr(self, name))}")
        if self.fallback not in self.systems:
            raise ValueError(f"fallback must be one of the systems {sorted(self.systems)}, got {self.fallback!r}")

    def is_correct(self, i: int, answer: str) -> bool:
        if self.score is not None:
            return bool(self.score(i, answer))
        return answer.strip().removesuffix(".").strip() == self.golds[i]


def dominated_by(point: tuple[float, float], systems: dict[str, tuple[float, float]]) -> list[str]:
    """The systems at least as accurate as ``point`` = (accuracy, cost) at a cost at most as high.

    A point no system dominates lies beyond the stored frontier (it extends it); a point
    equal to a stored system (to a relative 1e-6: stored numbers are rounded) is dominated by
    it (it adds nothing).
    """
    acc, cost = point
    tol = 1e-6  # stored summaries are rounded (accuracy to 7 decimals, FLOPs to 0.1): equal within this is equal
    return [name for name, (a, c) in systems.items() if a >= acc - tol and c <= cost * (1 + tol) + tol]


def score_rule(rule: Callable[[str], str], task: FrontierTask, *, exercise: str = "13 · a front-door rule") -> dict:
    """Run ``rule`` on every prompt of ``task``; the combined system's accuracy and mean cost.

    Returns ``{"accuracy", "cost", "answered", "answered_right", "deferred"}``. A
    ``NotImplementedError`` or an exception of the rule propagates (the checker reports it);
    ``None`` or a non-string answer is an :class:`ExerciseFailed` saying so.
    """
    right, cost, answered, answered_right = 0, 0.0, 0, 0
    for i, prompt in enumerate(task.prompts):
        got = rule(prompt)
        if got is None:
            raise ExerciseFailed(
                f"{exercise}: for the prompt {prompt!r} your function returned None — did you forget `return`? "
                f"(return DEFER to hand a query on to the system)"
            )
        if not isinstance(got, str):
            raise ExerciseFailed(
                f"{exercise}: for the prompt {prompt!r} your function returned {type(got).__name__} {got!r}; "
                f"return the answer as a str, or DEFER"
            )
        if got == DEFER:
            right += bool(task.fallback_correct[i])
            cost += float(task.fallback_cost[i])
        else:
            ok = task.is_correct(i, got)
            answered += 1
            answered_right += ok
            right += ok
            cost += task.rule_cost
    n = len(task.prompts)
    return {
        "accuracy": right / n,
        "cost": cost / n,
        "answered": answered,
        "answered_right": answered_right,
        "deferred": n - answered,
    }


def _fmt_cost(x: float) -> str:
    return f"{x:.3g}"


def check_front_door(rule: Callable[[str], str], *, task: FrontierTask | None = None) -> CheckResult:
    """13 — ``rule(prompt) -> answer | DEFER``: a component in front of the efficient system.

    The rule sees every held-out prompt; what it answers is scored with the item's scoring
    rule at the rule's own cost (none in model FLOPs), what it defers is answered by the
    efficient system as in the stored run. It passes when the combined system is at least as
    accurate as the efficient system alone (a rule that answers everything badly at no cost
    is cheap, not better) and lies beyond the frontier of the stored systems (monolith,
    efficient system, ablations, configurator settings): none of them is at least as accurate
    at a cost per query at most as high. ``task`` defaults to the stored full run
    (:func:`frontier_task`).
    """
    exercise = "13 · a front-door rule"
    if task is None:
        task = frontier_task()
    if not isinstance(task, FrontierTask):
        raise TypeError(f"task must be a FrontierTask or None, got {type(task).__name__}")

    def system():
        r = score_rule(rule, task, exercise=exercise)
        mine = (r["accuracy"], r["cost"])
        base = task.systems[task.fallback][0]
        if r["accuracy"] < base - 1e-6:
            raise ExerciseFailed(
                f"{exercise}: your rule answered {r['answered']} of {len(task.prompts)} queries itself, "
                f"{r['answered_right']} of them right; the system scores {r['accuracy']:.1%}, below the "
                f"{task.fallback} system's {base:.1%} without the rule. A front door must not cost accuracy: "
                f"answer only the queries your rule gets right, and return DEFER for the rest."
            )
        beaten_by = dominated_by(mine, task.systems)
        if beaten_by:
            best = max(beaten_by, key=lambda s: (task.systems[s][0], -task.systems[s][1]))
            a, c = task.systems[best]
            raise ExerciseFailed(
                f"{exercise}: your rule answered {r['answered']} of {len(task.prompts)} queries itself "
                f"({r['answered_right']} right) and deferred {r['deferred']}; the system scores {r['accuracy']:.1%} "
                f"at {_fmt_cost(r['cost'])} {task.cost_unit}, but {best!r} reaches {a:.1%} at {_fmt_cost(c)}: "
                f"that is not beyond the frontier. Answer only what the rule gets right, and defer the rest."
            )
        return "beyond the frontier"

    return run_cases(exercise, system, [({}, "beyond the frontier")])


def check_time_from_flops_prediction(predicted, measured: float) -> CheckResult:
    """13 — the learner's predicted time (ms) per query of the monolith, from the efficient
    system's measured time scaled by the FLOPs ratio; ``measured``: the monolith's median in
    the live run. Never fails on the value (machines differ); it explains the gap.
    """
    return check_prediction(
        "13 · the monolith's time from FLOPs",
        predicted,
        measured,
        unit="ms",
        explain=(
            "Scaling a time by a FLOPs ratio assumes both systems spend their time on arithmetic at the same rate. "
            "A tiny model does not: each decode step of a few hundred thousand parameters is mostly fixed cost "
            "(Python, operator dispatch, the KV cache, a tool call or a search), so its time per FLOP is far higher "
            "than the larger model's, and the prediction misses by that factor. The two costs answer different "
            "questions: FLOPs say what a query needs on hardware that is kept busy (a large batch, a GPU), "
            "seconds say what it costs on this machine, one query at a time."
        ),
    )


def frontier_task(runs: dict | None = None) -> FrontierTask:
    """The exercise's data from the stored capstone run (:func:`course_lib.experiments.capstone.load_runs`).

    The fallback is the efficient system's per-item outcome and counted FLOPs; the frontier's
    points are every stored system (monolith, efficient, ablations) and every configurator
    setting, by overall accuracy and FLOPs per query.
    """
    from course_lib import capstone as cap

    if runs is None:
        from course_lib.experiments.capstone import load_runs

        runs = load_runs()
    items = [cap.Item(**d) for d in runs["items"]]
    recs = cap.configure(runs, cap.systems(runs)["efficient"], items)
    points = {name: (s["accuracy"]["overall"], s["flops_per_query"]) for name, s in runs["systems"].items()}
    for g in runs.get("grid", []):
        setting = f"configurator: search {g['retrieval']}, calculator {g['calculator']}, t={g['threshold']:g}, {g['bits']} bits"
        points[setting] = (g["accuracy"]["overall"], g["flops_per_query"])
    return FrontierTask(
        prompts=tuple(it.prompt for it in items),
        golds=tuple(it.gold for it in items),
        fallback="efficient",
        fallback_correct=tuple(bool(r["correct"]) for r in recs),
        fallback_cost=tuple(float(r["flops"]) for r in recs),
        systems=points,
        score=lambda i, answer: cap.score(answer, items[i]),
    )
