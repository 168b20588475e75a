"""Self-check quizzes: 3–5 questions per chapter, each answer explained, some about your own machine.

The questions are data, one file per chapter: ``course_lib/quiz_bank/chNN.json`` (the
format is in ``quiz_bank/README.md`` and enforced by :func:`validate`). A notebook's last
exercise section shows its quiz with::

    from course_lib import quiz
    quiz.show("02", measured={"q3": comparison.word})

* In a running notebook (JupyterLab, Colab) each question is an ipywidgets box: the
  lettered choices and a toggle per letter (or a number field), a *Check* button, and
  feedback that gives the chosen answer's explanation (and, after a wrong try, the right
  answer's). The result of each check goes to the local progress file
  (:mod:`course_lib.progress`).
* In the book build (``COURSE_BOOK_BUILD=1``) it is static HTML that needs no kernel, no
  JavaScript and no network: every choice is a ``<details>`` element that opens to say
  whether it is right and why; a number question's answer is behind one too.

Three kinds of question: ``choice`` (exactly one choice is correct), ``number`` (a number
within a relative tolerance), and ``measured`` — a prediction about this machine, whose
right choice is not in the file: the notebook passes the key its own measurement gave
(``measured={"q3": "faster"}``), so the answer is never typed. A ``number`` question whose
``answer`` is ``null`` likewise takes it from ``measured``.

Why not ``jupyterquiz`` (not installed here): it is a JavaScript quiz tool — the questions
are drawn by a script (its recommended setup also reloads them from a URL at page load,
and its math needs MathJax), so a page without JavaScript shows nothing, and it would be
one more dependency. The widget and the static twin here are small and need neither.
"""

from __future__ import annotations

import html
import json
import math
import numbers
import os
import re
from pathlib import Path

#: Where every chapter's questions live.
BANK_DIR = Path(__file__).resolve().parent / "quiz_bank"
KINDS = ("choice", "number", "measured")
MIN_QUESTIONS, MAX_QUESTIONS = 3, 5

_TOP_KEYS = {"chapter", "title", "questions"}
_Q_KEYS = {
    "choice": {"id", "kind", "prompt", "choices"},
    "number": {"id", "kind", "prompt", "answer", "tolerance", "why", "unit"},
    "measured": {"id", "kind", "prompt", "choices"},
}
_CHOICE_KEYS = {"choice": {"text", "correct", "why"}, "measured": {"key", "text", "why"}}

_RIGHT, _WRONG = "#009E73", "#D55E00"


class QuizError(ValueError):
    """A quiz file that breaks the format (the message names the file, the question and the rule)."""


# --------------------------------------------------------------------------- loading and validating


def _text(where: str, obj: dict, key: str) -> str:
    v = obj.get(key)
    if not isinstance(v, str) or not v.strip():
        raise QuizError(f"{where}: '{key}' must be a non-empty string, got {v!r}")
    if "$" in v or "\\(" in v or "\\[" in v:
        raise QuizError(f"{where}: '{key}' uses TeX math ({v[:60]!r}); write math in Unicode (×, ², √, ≈, ≤)")
    return v


def _keys(where: str, obj, allowed: set[str]) -> None:
    if not isinstance(obj, dict):
        raise QuizError(f"{where}: must be a JSON object, got {type(obj).__name__}")
    extra = set(obj) - allowed
    if extra:
        raise QuizError(f"{where}: unknown field(s) {sorted(extra)}; allowed: {sorted(allowed)}")


def validate(data, *, source: str = "quiz", chapter: str | None = None) -> dict:
    """Check a quiz against the format; returns it, or raises :class:`QuizError` saying what is wrong.

    Rules: a ``chapter`` (two digits, the file's), a ``title``, 3–5 ``questions`` with unique
    ``id``s and a ``prompt``; ``choice``: at least two choices, exactly one ``correct``, every
    choice with a ``why``; ``number``: an ``answer`` (a finite number, or null when the
    notebook passes it in), a relative ``tolerance`` > 0 and a ``why``; ``measured``: at least
    two choices with unique ``key``s and a ``why`` each, none marked correct. Math in Unicode.
    """
    _keys(source, data, _TOP_KEYS)
    ch = data.get("chapter")
    if not isinstance(ch, str) or not re.fullmatch(r"\d\d", ch):
        raise QuizError(f"{source}: 'chapter' must be a two-digit string such as '02', got {ch!r}")
    if chapter is not None and ch != chapter:
        raise QuizError(f"{source}: 'chapter' is {ch!r} but the file is for chapter {chapter!r}")
    _text(source, data, "title")
    questions = data.get("questions")
    if not isinstance(questions, list) or not MIN_QUESTIONS <= len(questions) <= MAX_QUESTIONS:
        n = len(questions) if isinstance(questions, list) else type(questions).__name__
        raise QuizError(f"{source}: 'questions' must be a list of {MIN_QUESTIONS}–{MAX_QUESTIONS} questions, got {n}")
    seen = set()
    for i, q in enumerate(questions):
        where = f"{source}, question {i + 1}"
        if not isinstance(q, dict):
            raise QuizError(f"{where}: must be a JSON object, got {type(q).__name__}")
        qid = q.get("id")
        if not isinstance(qid, str) or not qid:
            raise QuizError(f"{where}: 'id' must be a non-empty string, got {qid!r}")
        where = f"{source}, question {qid!r}"
        if qid in seen:
            raise QuizError(f"{where}: the id is used twice; ids must be unique")
        seen.add(qid)
        kind = q.get("kind")
        if kind not in KINDS:
            raise QuizError(f"{where}: 'kind' must be one of {list(KINDS)}, got {kind!r}")
        _keys(where, q, _Q_KEYS[kind])
        _text(where, q, "prompt")
        if kind == "number":
            ans = q.get("answer")
            if ans is not None and (
                isinstance(ans, bool) or not isinstance(ans, numbers.Real) or not math.isfinite(ans)
            ):
                raise QuizError(
                    f"{where}: 'answer' must be a finite number (or null: passed in by the notebook), got {ans!r}"
                )
            if "answer" not in q:
                raise QuizError(f"{where}: a number question needs an 'answer' (a number, or null when measured)")
            tol = q.get("tolerance")
            if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not (math.isfinite(tol) and tol > 0):
                raise QuizError(f"{where}: 'tolerance' (relative) must be a finite number > 0, got {tol!r}")
            _text(where, q, "why")
            if "unit" in q:
                _text(where, q, "unit")
            continue
        choices = q.get("choices")
        if not isinstance(choices, list) or len(choices) < 2:
            raise QuizError(f"{where}: 'choices' must be a list of at least 2 choices, got {choices!r}")
        for j, c in enumerate(choices):
            cw = f"{where}, choice {j + 1}"
            _keys(cw, c, _CHOICE_KEYS[kind])
            _text(cw, c, "text")
            _text(cw, c, "why")
            if kind == "choice" and not isinstance(c.get("correct"), bool):
                raise QuizError(f"{cw}: 'correct' must be true or false, got {c.get('correct')!r}")
            if kind == "measured":
                _text(cw, c, "key")
        if kind == "choice":
            n_right = sum(c["correct"] for c in choices)
            if n_right != 1:
                raise QuizError(f"{where}: exactly one choice must be correct, {n_right} are")
        else:
            keys = [c["key"] for c in choices]
            dupes = sorted({k for k in keys if keys.count(k) > 1})
            if dupes:
                raise QuizError(f"{where}: choice keys must be unique; repeated: {dupes}")
    return data


def bank_path(chapter: str, bank_dir: Path | str | None = None) -> Path:
    """The file holding chapter ``chapter``'s quiz."""
    if not isinstance(chapter, str) or not re.fullmatch(r"\d\d", chapter):
        raise ValueError(f"chapter must be a two-digit string such as '02', got {chapter!r}")
    return Path(bank_dir or BANK_DIR) / f"ch{chapter}.json"


def load(chapter: str, *, bank_dir: Path | str | None = None) -> dict:
    """Read and validate ``chNN.json`` (``FileNotFoundError`` naming the file when there is none)."""
    p = bank_path(chapter, bank_dir)
    if not p.is_file():
        raise FileNotFoundError(f"no quiz for chapter {chapter}: {p} does not exist")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise QuizError(f"{p.name}: not valid JSON ({e})") from e
    return validate(data, source=p.name, chapter=chapter)


def chapters(bank_dir: Path | str | None = None) -> list[str]:
    """The chapters that have a quiz file."""
    return sorted(
        m.group(1)
        for p in Path(bank_dir or BANK_DIR).glob("ch*.json")
        if (m := re.fullmatch(r"ch(\d\d)\.json", p.name))
    )


def _resolve(data: dict, measured: dict | None) -> dict[str, object]:
    """The answer each measured question takes from this run (ValueError when one is missing or wrong)."""
    measured = {} if measured is None else measured
    if not isinstance(measured, dict):
        raise TypeError(f"measured must be a dict of question id -> measured answer, got {type(measured).__name__}")
    ch = data["chapter"]
    by_id = {q["id"]: q for q in data["questions"]}
    for qid in measured:
        q = by_id.get(qid)
        if q is None:
            raise ValueError(
                f"measured names question {qid!r}, which chapter {ch}'s quiz does not have ({sorted(by_id)})"
            )
        if q["kind"] == "choice" or (q["kind"] == "number" and q.get("answer") is not None):
            raise ValueError(f"measured gives an answer for question {qid!r}, whose answer is in the quiz file already")
    out = {}
    for q in data["questions"]:
        qid = q["id"]
        if q["kind"] == "measured":
            keys = [c["key"] for c in q["choices"]]
            if qid not in measured:
                raise ValueError(
                    f"quiz.show({ch!r}): question {qid!r} is about this machine; pass measured={{{qid!r}: one of {keys}}}"
                )
            if measured[qid] not in keys:
                raise ValueError(f"measured[{qid!r}] must be one of {keys}, got {measured[qid]!r}")
            out[qid] = measured[qid]
        elif q["kind"] == "number" and q.get("answer") is None:
            v = measured.get(qid)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
                raise ValueError(
                    f"quiz.show({ch!r}): question {qid!r} takes its answer from this run; "
                    f"pass measured={{{qid!r}: a finite number}}, got {v!r}"
                )
            out[qid] = float(v)
    return out


# --------------------------------------------------------------------------- grading (shared by widget and tests)


def _fmt(x: float) -> str:
    """12 -> '12', 1e6 -> '1,000,000', 4.25 -> '4.25', 3e-5 -> '3e-05'."""
    if x == int(x) and abs(x) < 1e15:
        return f"{int(x):,}"
    return f"{x:,.4g}" if 1e-3 <= abs(x) < 1e6 else f"{x:.3g}"


def parse_number(text: str) -> float:
    """A number typed by the learner: '12', '3.5e6', '1,000,000' or '1 000' (ValueError otherwise)."""
    raw = (text or "").strip().replace("_", "").replace(" ", "").replace("\u202f", "")
    if re.fullmatch(r"[+-]?\d{1,3}(,\d{3})+(\.\d*)?", raw):
        raw = raw.replace(",", "")
    value = float(raw)
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {text!r}")
    return value


def _pct(tolerance: float) -> str:
    """A relative tolerance as a percentage: 0.05 -> '5%', 0.001 -> '0.1%'."""
    return f"{tolerance * 100:.3g}%"


def _inline(text: str) -> str:
    """Escape for HTML, then `code` spans."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def number_ok(value: float, answer: float, tolerance: float) -> bool:
    """Within ``tolerance`` relative to ``answer`` (absolute when the answer is 0)."""
    return abs(value - answer) <= tolerance * (abs(answer) if answer else 1.0)


def grade(question: dict, response, right=None) -> tuple[bool, str]:
    """(correct, feedback HTML) for one answer: a choice index, or a number.

    ``right`` is the measured key (``measured`` questions) or the measured number (``number``
    questions whose answer is null).
    """
    kind = question["kind"]
    if kind == "number":
        answer = question["answer"] if question.get("answer") is not None else right
        unit = f" {question['unit']}" if question.get("unit") else ""
        ok = number_ok(response, answer, question["tolerance"])
        head = (
            f"✓ Right: {_fmt(response)}{unit}."
            if ok
            else f"✗ {_fmt(response)}{unit} is not within {_pct(question['tolerance'])} of the answer, {_fmt(answer)}{unit}."
        )
        if ok and response != answer:
            head = f"✓ Right: {_fmt(response)}{unit} is within {_pct(question['tolerance'])} of {_fmt(answer)}{unit}."
        return ok, _feedback(ok, head, question["why"])
    choices = question["choices"]
    chosen = choices[response]
    if kind == "choice":
        ok = bool(chosen["correct"])
        right_choice = next(c for c in choices if c["correct"])
        if ok:
            return True, _feedback(True, "✓ Right.", chosen["why"])
        return False, _feedback(
            False, "✗ Not quite.", chosen["why"], f"The right answer: {right_choice['text']} — {right_choice['why']}"
        )
    right_choice = next(c for c in choices if c["key"] == right)
    ok = chosen["key"] == right
    seen = f"On this machine you measured: {right_choice['text']}."
    if ok:
        return True, _feedback(True, f"✓ Your prediction was right. {seen}", chosen["why"])
    return False, _feedback(
        False,
        f"✗ You predicted: {chosen['text']}. {seen}",
        chosen["why"],
        f"Why it came out this way: {right_choice['why']}",
    )


def _feedback(ok: bool, head: str, why: str, extra: str = "") -> str:
    colour = _RIGHT if ok else _WRONG
    out = f'<div style="line-height:1.4"><span style="color:{colour};font-weight:600">{_inline(head)}</span> {_inline(why)}'
    if extra:
        out += f"<br>{_inline(extra)}"
    return out + "</div>"


# --------------------------------------------------------------------------- the live widget


class _Question:
    """One question's widgets: ``prompt`` (HTML, with the lettered choices), ``input`` (ToggleButtons
    A, B, ... whose value is the choice's index, or Text for a number), ``button`` (Check), ``feedback``."""

    def __init__(self, quiz, question: dict, right):
        import ipywidgets as w

        self.quiz, self.question, self.right = quiz, question, right
        self.id = question["id"]
        self.correct: bool | None = None
        self.ever_right = False
        self.first_try: bool | None = None
        prompt = f"<b>{_inline(question['prompt'])}</b>"
        if question["kind"] == "number":
            unit = question.get("unit", "")
            self.input = w.Text(placeholder=f"a number{' in ' + unit if unit else ''}", description="")
        else:
            # RadioButtons do not wrap long labels (ipywidgets#3032): the choices are wrapping HTML,
            # picked with one short toggle per letter.
            letters = [chr(ord("A") + i) for i in range(len(question["choices"]))]
            items = "".join(
                f'<li style="margin:0.15em 0"><b>{x}.</b> {_inline(c["text"])}</li>'
                for x, c in zip(letters, question["choices"])
            )
            prompt += f'<ul style="list-style:none;padding-left:0.5em;margin:0.3em 0">{items}</ul>'
            self.input = w.ToggleButtons(
                options=[(x, i) for i, x in enumerate(letters)],
                value=None,
                description="Your answer:",
                style={"button_width": "3em", "description_width": "initial"},
            )
        self.prompt = w.HTML(f'<div style="line-height:1.4">{prompt}</div>')  # the widget's own is 28 px
        self.button = w.Button(description="Check", button_style="primary")
        self.feedback = w.HTML("")
        self.button.on_click(lambda _: self.check())
        self.box = w.VBox([self.prompt, self.input, self.button, self.feedback], layout=w.Layout(margin="0 0 1em 0"))

    def check(self) -> bool | None:
        """Grade the current input, show the feedback, record it; None when there is nothing to grade."""
        if self.question["kind"] == "number":
            raw = (self.input.value or "").strip()
            try:
                response = parse_number(raw)
            except ValueError:
                self.feedback.value = _feedback(False, "Type a number first", f"(got {raw!r}; e.g. 12 or 3.5e6).")
                return None
        else:
            response = self.input.value
            if response is None:
                self.feedback.value = "<div>Pick an answer first, then press Check.</div>"
                return None
        ok, self.feedback.value = grade(self.question, response, self.right)
        self.correct = ok
        self.ever_right = self.ever_right or ok
        if self.first_try is None:
            self.first_try = ok
        from course_lib import progress

        progress.record(self.quiz.chapter, "quiz", self.id, passed=ok)
        self.quiz._update_score()
        return ok


def _quiz_widget_class():
    import ipywidgets as w

    class QuizWidget(w.VBox):
        """The live quiz: ``questions`` (one :class:`_Question` each, in order) and a running ``score`` line."""

        def __init__(self, data: dict, answers: dict):
            self.chapter, self.quiz_title = data["chapter"], data["title"]
            self.questions = [_Question(self, q, answers.get(q["id"])) for q in data["questions"]]
            self.score = w.HTML("")
            header = w.HTML(f"<h4 style='margin-bottom:0.3em'>{_inline(self.quiz_title)}</h4>")
            super().__init__([header] + [q.box for q in self.questions] + [self.score])
            self._update_score()

        def _update_score(self) -> None:
            n = len(self.questions)
            answered = [q for q in self.questions if q.correct is not None]
            right = sum(q.ever_right for q in answered)  # as progress counts it: right once is right
            first = sum(bool(q.first_try) for q in answered)
            self.score.value = (
                f"<div><b>Score</b>: {right} / {n} right ({first} at the first try); "
                f"{len(answered)} of {n} answered.</div>"
                if answered
                else f"<div>{n} questions: answer each, then press Check.</div>"
            )

    return QuizWidget


# --------------------------------------------------------------------------- the static twin


class StaticQuiz:
    """The quiz as HTML with no script: every choice a ``<details>`` that says right or wrong and why."""

    def __init__(self, data: dict, answers: dict):
        self.data, self.answers = data, answers

    def _question(self, i: int, q: dict) -> str:
        parts = [f'<p style="margin-bottom:0.3em"><b>{_inline(q["prompt"])}</b></p>']  # the <ol> numbers it
        if q["kind"] == "number":
            answer = q["answer"] if q.get("answer") is not None else self.answers[q["id"]]
            unit = f" {q['unit']}" if q.get("unit") else ""
            note = " (measured on the machine that built this page)" if q.get("answer") is None else ""
            parts.append(
                f"<details><summary>Show the answer</summary><p>{_inline(_fmt(answer) + unit + note)}, within "
                f"{_pct(q['tolerance'])}. {_inline(q['why'])}</p></details>"
            )
            return "<li>" + "".join(parts) + "</li>"
        for j, c in enumerate(q["choices"]):
            letter = chr(ord("A") + j)
            if q["kind"] == "choice":
                ok = c["correct"]
                verdict = "✓ Right." if ok else "✗ Wrong."
            else:
                ok = c["key"] == self.answers[q["id"]]
                verdict = (
                    "✓ This is what the machine that built this page measured."
                    if ok
                    else "✗ Not what the machine that built this page measured."
                )
            colour = _RIGHT if ok else _WRONG
            parts.append(
                f'<details style="margin:0.2em 0"><summary>{letter}. {_inline(c["text"])}</summary>'
                f'<p style="margin:0.2em 0 0.4em 1.2em"><span style="color:{colour};font-weight:600">{verdict}</span> '
                f"{_inline(c['why'])}</p></details>"
            )
        if q["kind"] == "measured":
            parts.append(
                "<p style='font-size:0.9em'>Your machine may differ: run the notebook to measure it and check your "
                "prediction.</p>"
            )
        return "<li>" + "".join(parts) + "</li>"

    def _repr_html_(self) -> str:
        qs = "".join(self._question(i + 1, q) for i, q in enumerate(self.data["questions"]))
        return (
            f'<div class="course-quiz"><p><b>{_inline(self.data["title"])}</b> — answer each question yourself, '
            "then open a choice to see whether it is right and why (in a running notebook the quiz checks your "
            f"answers and records your score).</p><ol>{qs}</ol></div>"
        )

    def __repr__(self) -> str:
        lines = [self.data["title"]]
        for i, q in enumerate(self.data["questions"], 1):
            lines.append(f"{i}. {q['prompt']}")
            for j, c in enumerate(q.get("choices", [])):
                lines.append(f"   {chr(ord('A') + j)}. {c['text']}")
        return "\n".join(lines)


def show(chapter: str, measured: dict | None = None, *, bank_dir: Path | str | None = None):
    """Chapter ``chapter``'s quiz: a widget in a running notebook, static HTML in the book build.

    ``measured`` maps each ``measured`` question's id to the key this run's measurement gave
    (and each ``number`` question with a null answer to its number); a missing or unknown
    one is a ``ValueError``. Returns the widget (or the static quiz): make it the cell's last line.
    """
    data = load(chapter, bank_dir=bank_dir)
    answers = _resolve(data, measured)
    if os.environ.get("COURSE_BOOK_BUILD") == "1":
        return StaticQuiz(data, answers)
    return _quiz_widget_class()(data, answers)


def static(chapter: str, measured: dict | None = None, *, bank_dir: Path | str | None = None) -> StaticQuiz:
    """The static HTML quiz whatever the environment (what the book shows)."""
    data = load(chapter, bank_dir=bank_dir)
    return StaticQuiz(data, _resolve(data, measured))
