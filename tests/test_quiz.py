"""Self-check quizzes (course_lib.quiz): the bank is valid, the widget grades, the static twin needs nothing."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jupytext
import pytest

from course_lib import progress, quiz
from course_lib.quiz import QuizError

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted(p.stem[:2] for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.py"))
BANK = quiz.chapters()

GOOD = {
    "chapter": "02",
    "title": "Mixture of experts: self-check",
    "questions": [
        {
            "id": "q1",
            "kind": "choice",
            "prompt": "Which layer does `top_k` routing pick?",
            "choices": [
                {"text": "the k largest router logits", "correct": True, "why": "softmax keeps the order"},
                {"text": "k random experts", "correct": False, "why": "routing is learned, not random"},
                {"text": "every expert", "correct": False, "why": "that is a dense layer"},
            ],
        },
        {
            "id": "q2",
            "kind": "number",
            "prompt": "8 experts, top-2: what fraction of expert weights does a token read?",
            "answer": 0.25,
            "tolerance": 0.02,
            "why": "2 ÷ 8 = 0.25",
        },
        {
            "id": "q3",
            "kind": "measured",
            "prompt": "On your machine, is the MoE layer faster than the dense one? (predict first)",
            "choices": [
                {"key": "faster", "text": "MoE is faster", "why": "fewer FLOPs win when dispatch is cheap"},
                {"key": "slower", "text": "MoE is slower", "why": "gather/scatter overhead dominates at this size"},
                {"key": "within noise", "text": "no difference beyond noise", "why": "the two costs cancel"},
            ],
        },
        {
            "id": "q4",
            "kind": "number",
            "prompt": "Your measured speed-up?",
            "answer": None,
            "tolerance": 0.1,
            "unit": "×",
            "why": "the notebook measured it",
        },
    ],
}


@pytest.fixture
def bank(tmp_path):
    def write(data, chapter="02"):
        (tmp_path / f"ch{chapter}.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        return tmp_path

    write(GOOD)
    return write


@pytest.fixture(autouse=True)
def progress_file(tmp_path, monkeypatch):
    p = tmp_path / "progress" / "progress.json"
    monkeypatch.setenv("COURSE_PROGRESS", str(p))
    monkeypatch.delenv("COURSE_BOOK_BUILD", raising=False)
    return p


MEASURED = {"q3": "slower", "q4": 1.8}


# --------------------------------------------------------------------------- the bank


@pytest.mark.parametrize("chapter", BANK)
def test_every_quiz_in_the_bank_validates(chapter):
    data = quiz.load(chapter)
    for q in data["questions"]:
        if q["kind"] == "choice":
            assert sum(c["correct"] for c in q["choices"]) == 1, f"ch{chapter} {q['id']}: one right answer"
        assert all(c["why"].strip() for c in q.get("choices", [])), f"ch{chapter} {q['id']}: a why per choice"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_every_chapter_has_a_quiz(chapter):
    assert chapter in BANK, f"course_lib/quiz_bank/ch{chapter}.json is missing (see quiz_bank/README.md)"


@pytest.mark.parametrize("chapter", BANK)
def test_the_notebook_passes_every_measured_answer(chapter):
    """A measured question's answer comes from the notebook's own run: its quiz.show call names it."""
    data = quiz.load(chapter)
    needs = [q["id"] for q in data["questions"] if q["kind"] == "measured" or q.get("answer", 0) is None]
    nbs = sorted((ROOT / "notebooks").glob(f"{chapter}_*.py"))
    assert nbs, f"quiz ch{chapter}.json has no notebook"
    pattern = rf"""quiz\.show\(\s*["']{chapter}["']"""
    cells = [c.source for c in jupytext.read(nbs[0]).cells if c.cell_type == "code" and re.search(pattern, c.source)]
    assert cells, f"{nbs[0].name} does not call quiz.show({chapter!r}, ...)"
    call = cells[0][re.search(pattern, cells[0]).start() :]
    for qid in needs:
        assert re.search(rf"""["']{qid}["']""", call), f"{nbs[0].name}: quiz.show must pass measured[{qid!r}]"


def test_the_good_fixture_loads(bank):
    assert quiz.load("02", bank_dir=bank(GOOD))["title"] == GOOD["title"]
    assert quiz.chapters(bank(GOOD)) == ["02"]


def _broken(path: str, value):
    data = copy.deepcopy(GOOD)
    *keys, last = path.split(".")
    obj = data
    for k in keys:
        obj = obj[int(k)] if k.isdigit() else obj[k]
    if value is _DELETE:
        del obj[int(last) if last.isdigit() else last]
    else:
        obj[int(last) if last.isdigit() else last] = value
    return data


_DELETE = object()


@pytest.mark.parametrize(
    "path, value, message",
    [
        ("questions.0.choices.1.correct", True, "exactly one choice must be correct, 2 are"),
        ("questions.0.choices.0.correct", False, "exactly one choice must be correct, 0 are"),
        ("questions.0.choices.2.why", _DELETE, r"choice 3: 'why' must be a non-empty string"),
        ("questions.0.choices.2.why", "  ", r"choice 3: 'why' must be a non-empty string"),
        ("questions.0.choices.1.correct", "no", "'correct' must be true or false"),
        ("questions.0.choices", [{"text": "a", "correct": True, "why": "b"}], "at least 2 choices"),
        ("questions.1.tolerance", 0, "'tolerance' .relative. must be a finite number > 0"),
        ("questions.1.tolerance", _DELETE, "'tolerance'"),
        ("questions.1.answer", _DELETE, "needs an 'answer'"),
        ("questions.1.answer", "0.25", "'answer' must be a finite number"),
        ("questions.1.why", _DELETE, "'why' must be a non-empty string"),
        ("questions.2.choices.1.key", "faster", r"keys must be unique; repeated: \['faster'\]"),
        ("questions.2.choices.0.correct", True, r"unknown field\(s\) \['correct'\]"),
        ("questions.1.id", "q1", "the id is used twice"),
        ("questions.1.kind", "essay", "'kind' must be one of"),
        ("questions.0.prompt", "Is $x^2$ right?", "TeX math"),
        ("questions.0.choices.0.corect", True, r"unknown field\(s\) \['corect'\]"),
        ("questions", GOOD["questions"][:2], "3–5 questions, got 2"),
        ("questions", GOOD["questions"] * 2, "3–5 questions, got 8"),
        ("chapter", "2", "two-digit"),
        ("chapter", "03", "file is for chapter '02'"),
        ("title", "", "'title' must be a non-empty string"),
    ],
)  # fmt: skip
def test_a_broken_quiz_fails_with_the_right_message(bank, path, value, message):
    with pytest.raises(QuizError, match=message) as info:
        quiz.load("02", bank_dir=bank(_broken(path, value)))
    assert str(info.value).startswith("ch02.json"), "the message names the file"


def test_not_json_and_missing_file(bank, tmp_path):
    (tmp_path / "ch02.json").write_text("{oops", encoding="utf-8")
    with pytest.raises(QuizError, match="ch02.json: not valid JSON"):
        quiz.load("02", bank_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="no quiz for chapter 07"):
        quiz.load("07", bank_dir=tmp_path)
    with pytest.raises(ValueError, match="two-digit"):
        quiz.load("2")


@pytest.mark.parametrize(
    "measured, message",
    [
        (None, r"question 'q3' is about this machine; pass measured=\{'q3': one of \['faster', 'slower'"),
        ({"q4": 1.0}, "question 'q3' is about this machine"),
        ({"q3": "fast", "q4": 1.0}, r"measured\['q3'\] must be one of \['faster', 'slower', 'within noise'\]"),
        ({"q3": "faster"}, "question 'q4' takes its answer from this run"),
        ({"q3": "faster", "q4": "big"}, "question 'q4' takes its answer from this run"),
        ({"q3": "faster", "q4": 1.0, "q9": "x"}, "names question 'q9'"),
        ({"q3": "faster", "q4": 1.0, "q2": 0.3}, "whose answer is in the quiz file already"),
    ],
)
def test_measured_answers_must_be_given_and_valid(bank, measured, message):
    with pytest.raises(ValueError, match=message):
        quiz.show("02", measured=measured, bank_dir=bank(GOOD))


# --------------------------------------------------------------------------- the live widget (headless)


def test_widget_grades_each_kind_and_records_the_score(bank, progress_file):
    import ipywidgets as w

    box = quiz.show("02", measured=MEASURED, bank_dir=bank(GOOD))
    assert isinstance(box, w.VBox)
    q1, q2, q3, q4 = box.questions
    assert isinstance(q1.input, w.ToggleButtons) and isinstance(q2.input, w.Text)
    assert "<b>B.</b> k random experts" in q1.prompt.value, "choices are wrapping HTML, picked by letter"
    assert isinstance(q1.button, w.Button) and q1.feedback.value == ""

    q1.button.click()
    assert "Pick an answer first" in q1.feedback.value

    q1.input.value = 1  # wrong
    q1.button.click()
    fb = q1.feedback.value
    assert "✗" in fb and "routing is learned, not random" in fb, "the chosen answer's why"
    assert "The right answer: the k largest router logits — softmax keeps the order" in fb, "and the right one's"
    q1.input.value = 0
    q1.button.click()
    assert "✓ Right." in q1.feedback.value and "softmax keeps the order" in q1.feedback.value
    assert "routing is learned" not in q1.feedback.value

    q2.input.value = "0.251"
    q2.button.click()
    assert "✓" in q2.feedback.value and "2 ÷ 8 = 0.25" in q2.feedback.value
    q2.input.value = "1/4"
    q2.button.click()
    assert "Type a number first" in q2.feedback.value
    q2.input.value = "0.3"
    q2.button.click()
    assert "✗ 0.3 is not within 2% of the answer, 0.25" in q2.feedback.value

    q3.input.value = 0  # predicted faster, measured slower
    q3.button.click()
    fb = q3.feedback.value
    assert "✗" in fb and "On this machine you measured: MoE is slower." in fb
    assert "fewer FLOPs" in fb and "gather/scatter overhead" in fb

    q4.input.value = "1.9"
    q4.button.click()
    assert "✓" in q4.feedback.value and "1.8 ×" in q4.feedback.value

    # right once counts as right (q1 second try, q2 first try then changed, q4); q2 and q4 at the first try
    assert "Score</b>: 3 / 4 right (2 at the first try); 4 of 4 answered." in box.score.value
    s = progress.summary()["02"]
    assert (s["quiz_right"], s["quiz_answered"]) == (3, 4)


def test_widget_html_escapes_the_text(bank):
    data = _broken("questions.0.choices.1.why", "<script>alert(1)</script> & more")
    box = quiz.show("02", measured=MEASURED, bank_dir=bank(data))
    box.questions[0].input.value = 1
    box.questions[0].button.click()
    assert "<script>" not in box.questions[0].feedback.value and "&lt;script&gt;" in box.questions[0].feedback.value


# --------------------------------------------------------------------------- the static twin (book)


def test_book_build_gives_static_html_without_script_or_network(bank, monkeypatch):
    monkeypatch.setenv("COURSE_BOOK_BUILD", "1")
    static = quiz.show("02", measured=MEASURED, bank_dir=bank(GOOD))
    page = static._repr_html_()
    assert "<script" not in page.lower() and "http" not in page.lower() and "<link" not in page.lower()
    assert "$" not in page and "\\(" not in page
    n_choices = sum(len(q.get("choices", [])) for q in GOOD["questions"])
    n_numbers = sum(q["kind"] == "number" for q in GOOD["questions"])
    assert page.count("<details") == n_choices + n_numbers, "every choice, and every number's answer, is a <details>"
    assert page.count("✓") == 2, "one right choice for q1, the measured one for q3 (numbers show no mark)"
    assert "<code>top_k</code>" in page
    assert "0.25, within 2%" in page and "1.8 × (measured on the machine that built this page), within 10%" in page
    assert "MoE is slower</summary>" in page
    slower = page.index("MoE is slower</summary>")
    assert "✓ This is what the machine that built this page measured." in page[slower : slower + 200]
    assert quiz.static("02", measured=MEASURED, bank_dir=bank(GOOD))._repr_html_() == page
    assert "1. Which layer does `top_k` routing pick?" in repr(static)


@pytest.mark.parametrize("chapter", BANK)
def test_every_bank_quiz_renders_statically(chapter):
    data = quiz.load(chapter)
    measured = {}
    for q in data["questions"]:
        if q["kind"] == "measured":
            measured[q["id"]] = q["choices"][0]["key"]
        elif q["kind"] == "number" and q["answer"] is None:
            measured[q["id"]] = 1.0
    page = quiz.static(chapter, measured=measured)._repr_html_()
    assert "<script" not in page.lower() and "http" not in page.lower()


@pytest.mark.parametrize(
    "text, value", [("12", 12.0), (" 3.5e6 ", 3.5e6), ("1,000,000", 1e6), ("1 000", 1000.0), ("-0.5", -0.5)]
)
def test_typed_numbers_are_read_generously(text, value):
    assert quiz.parse_number(text) == value


@pytest.mark.parametrize("text", ["1,5", "abc", "", "inf", "nan", "1/4"])
def test_ambiguous_or_non_numbers_are_refused(text):
    with pytest.raises(ValueError):
        quiz.parse_number(text)


def test_tolerance_reads_as_a_percentage(bank):
    data = _broken("questions.1.tolerance", 0.001)
    page = quiz.static("02", measured=MEASURED, bank_dir=bank(data))._repr_html_()
    assert "0.25, within 0.1%" in page
