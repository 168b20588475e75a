"""The learner's progress: which exercises passed and how the quizzes went, in one local file.

Checkers (:mod:`course_lib.exercises`) and quizzes (:mod:`course_lib.quiz`) call
:func:`record`; :func:`show` (the last cell of each chapter) and ``python -m course_lib
progress`` print a table per chapter: exercises passed / attempted, quiz score, last run.

The file is plain JSON on the learner's own disk, outside the repository:

* ``$COURSE_PROGRESS`` when set (the course's own notebook runs and tests point it at
  ``build/progress.json``, so CI never writes to a home directory);
* else ``%APPDATA%\\beyond-scale\\progress.json`` on Windows,
  ``~/Library/Application Support/beyond-scale/progress.json`` on macOS, and
  ``$XDG_DATA_HOME/beyond-scale/progress.json`` (default ``~/.local/share/...``) elsewhere.

Nothing is sent anywhere. Writing goes through a temporary file and a rename, so a crash
never leaves half a file; a corrupt file is set aside (``.corrupt``) with a warning and a
fresh one started; and a file that cannot be written only warns, once — recording progress
must never make a checker fail.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import tempfile
import warnings
from datetime import UTC, datetime
from pathlib import Path

#: What can be recorded: a coded exercise, a prediction exercise, a quiz question.
KINDS = ("exercise", "prediction", "quiz")
APP = "beyond-scale"
_VERSION = 1
_warned = False


def path() -> Path:
    """Where the progress file lives (see the module doc); the file need not exist yet."""
    env = os.environ.get("COURSE_PROGRESS")
    if env:
        return Path(env).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("APPDATA") or Path.home() / "AppData" / "Roaming")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / APP / "progress.json"


def _warn_once(message: str) -> None:
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(message, stacklevel=3)


def _empty() -> dict:
    return {"version": _VERSION, "chapters": {}}


def load() -> dict:
    """The whole progress file as a dict (empty when missing or unreadable)."""
    p = path()
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        return _empty()
    except OSError as e:
        _warn_once(f"cannot read the progress file {p} ({e}); progress is not shown")
        return _empty()
    try:
        data = json.loads(raw.decode("utf-8"))
        if not isinstance(data, dict) or not isinstance(data.get("chapters"), dict):
            raise ValueError("not a progress file (no 'chapters' object)")
        for ch in data["chapters"].values():
            if not isinstance(ch, dict) or not all(isinstance(v, dict) for v in ch.values()):
                raise ValueError("a chapter entry is not an object of objects")
    except ValueError as e:
        aside = p.with_name(p.name + ".corrupt")
        with contextlib.suppress(OSError):
            os.replace(p, aside)
        warnings.warn(
            f"the progress file {p} was not valid ({e}); it was moved to {aside.name} and a fresh one started",
            stacklevel=2,
        )
        return _empty()
    return data


@contextlib.contextmanager
def _locked(p: Path):
    """An exclusive lock beside the file while reading, changing and writing it (POSIX; best effort
    elsewhere), so two kernels recording at once do not lose each other's update."""
    try:
        import fcntl
    except ImportError:  # Windows: the rename is still atomic; a rare lost update is acceptable
        yield
        return
    with open(p.with_name(p.name + ".lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _write(p: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True, ensure_ascii=False)
            f.write("\n")
        os.replace(tmp, p)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_chapter(chapter) -> str:
    if not isinstance(chapter, str) or not (re.fullmatch(r"\d\d", chapter) or chapter == "other"):
        raise ValueError(f"chapter must be a two-digit string such as '02' (or 'other'), got {chapter!r}")
    return chapter


def record(chapter: str, kind: str, item: str, *, passed: bool | None, score: float | None = None) -> None:
    """Record one outcome: ``passed`` True / False, or None for *not attempted yet*.

    ``kind`` is one of :data:`KINDS`; ``item`` names the exercise or the quiz question id;
    ``score`` is an optional number kept with it (a prediction's measured / predicted ratio).
    A *not attempted* outcome never erases an earlier pass or failure (reopening a fresh copy
    of a notebook runs the stubs again). A file that cannot be written warns once and is
    otherwise ignored.
    """
    check_chapter(chapter)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {list(KINDS)}, got {kind!r}")
    if not isinstance(item, str) or not item:
        raise ValueError(f"item must be a non-empty str, got {item!r}")
    if passed is not None and not isinstance(passed, bool):
        raise ValueError(f"passed must be True, False or None (not attempted), got {passed!r}")
    if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))):
        raise ValueError(f"score must be a number or None, got {score!r}")
    p = path()
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        with _locked(p):
            data = load()
            items = data["chapters"].setdefault(chapter, {})
            key = f"{kind}:{item}"
            entry = items.get(key) or {"kind": kind, "item": item, "attempts": 0, "ever_passed": False}
            entry["last_run"] = _now()
            if passed is None:
                entry.setdefault("status", "not attempted")
            else:
                entry["status"] = "passed" if passed else "failed"
                entry["attempts"] = int(entry.get("attempts", 0)) + 1
                entry["ever_passed"] = bool(entry.get("ever_passed")) or passed
                if kind == "quiz" and "first_try" not in entry:
                    entry["first_try"] = passed
            if score is not None:
                entry["score"] = float(score)
            items[key] = entry
            _write(p, data)
    except OSError as e:
        _warn_once(f"cannot write the progress file {p} ({e}); your progress is not being saved")


def _quiz_size(chapter: str) -> int | None:
    try:
        from course_lib import quiz

        return len(quiz.load(chapter)["questions"])
    except Exception:  # no quiz for this chapter (yet), or an unreadable bank: show what was answered
        return None


def summary() -> dict[str, dict]:
    """Per chapter (sorted): exercises passed / attempted / seen, quiz right / answered / questions, last run (UTC).

    An exercise counts as passed once it has passed (a later failed edit does not erase
    it), as attempted once the checker ran on something other than the stub. A quiz
    question counts as right once answered right.
    """
    out = {}
    for chapter, items in sorted(load()["chapters"].items()):
        ex = [e for e in items.values() if e.get("kind") in ("exercise", "prediction")]
        qz = [e for e in items.values() if e.get("kind") == "quiz"]
        out[chapter] = {
            "exercises_passed": sum(bool(e.get("ever_passed")) for e in ex),
            "exercises_attempted": sum(int(e.get("attempts", 0)) > 0 for e in ex),
            "exercises_seen": len(ex),
            "quiz_right": sum(bool(e.get("ever_passed")) for e in qz),
            "quiz_answered": sum(int(e.get("attempts", 0)) > 0 for e in qz),
            "quiz_questions": _quiz_size(chapter) if qz else None,
            "last_run": max((e.get("last_run", "") for e in items.values()), default=""),
        }
    return out


def _rows(chapter: str | None) -> list[dict]:
    rows = []
    for ch, s in summary().items():
        if chapter is not None and ch != chapter:
            continue
        total = s["quiz_questions"] if s["quiz_questions"] is not None else s["quiz_answered"]
        rows.append(
            {
                "chapter": ch,
                "exercises passed": (
                    f"{s['exercises_passed']} of {s['exercises_attempted']} attempted"
                    if s["exercises_attempted"]
                    else "none attempted yet"
                ),
                "quiz": f"{s['quiz_right']} / {total} right" if s["quiz_answered"] else "not taken",
                "last run (UTC)": s["last_run"].replace("T", " ").rstrip("Z"),
            }
        )
    return rows


def _item_rows(chapter: str) -> list[dict]:
    items = load()["chapters"].get(chapter, {})
    rows = []
    for e in sorted(items.values(), key=lambda e: (KINDS.index(e.get("kind", "exercise")), e.get("item", ""))):
        status = e.get("status", "")
        if e.get("ever_passed") and status != "passed":
            status = f"{status} (passed before)"
        rows.append(
            {
                "kind": e.get("kind", ""),
                "item": e.get("item", ""),
                "status": status,
                "last run (UTC)": e.get("last_run", "").replace("T", " ").rstrip("Z"),
            }
        )
    return rows


BOOK_NOTE = (
    "When you run this notebook yourself (JupyterLab, Colab), this cell shows a table of your progress: "
    "the exercises you passed, your quiz score and when you last ran each chapter. It is kept in a local "
    "file on your own machine ({where}); nothing is sent anywhere. From a terminal: "
    "python -m course_lib progress."
)
_WHERE = "on Linux ~/.local/share/beyond-scale/progress.json, on macOS ~/Library/Application Support/…, on Windows %APPDATA%\\…"


class ProgressView:
    """The progress table and the file's path; HTML in a notebook, text elsewhere."""

    def __init__(self, chapter: str | None = None):
        from course_lib.viz import Table

        self.chapter = chapter
        self.path = path()
        rows = _rows(chapter)
        what = f"chapter {chapter}" if chapter else "every chapter"
        self.table = Table(rows, caption=f"Your progress, {what}") if rows else None
        detail = _item_rows(chapter) if chapter else []
        self.detail = Table(detail, caption=f"Chapter {chapter}, item by item") if detail else None

    def _empty_line(self) -> str:
        what = f"chapter {self.chapter}" if self.chapter else "any chapter"
        return f"No progress recorded for {what} yet: run an exercise's checker or answer a quiz."

    def _footer(self) -> str:
        colab = (
            " On Colab the file lives in the runtime and goes when the runtime is recycled: download it from "
            "the Files panel to keep it."
            if "google.colab" in sys.modules
            else ""
        )
        return (
            f"Kept in {self.path} (a local file; nothing is sent anywhere). "
            f"`python -m course_lib progress` prints it; `--reset` deletes it.{colab}"
        )

    def __repr__(self) -> str:
        parts = [self.table.to_text() if self.table else self._empty_line()]
        if self.detail:
            parts.append(self.detail.to_text())
        parts.append(self._footer())
        return "\n\n".join(parts)

    def _repr_html_(self) -> str:
        import html

        parts = [self.table._repr_html_() if self.table else f"<p>{html.escape(self._empty_line())}</p>"]
        if self.detail:
            parts.append(self.detail._repr_html_())
        footer = re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(self._footer()))
        parts.append(f'<p style="font-size:0.9em">{footer}</p>')
        return '<div class="course-progress">' + "".join(parts) + "</div>"


class _BookNote:
    """What the static book shows instead of the table (the CI machine's progress means nothing to a reader)."""

    def __init__(self, chapter: str | None):
        self.chapter = chapter
        self.text = BOOK_NOTE.format(where=_WHERE)

    def __repr__(self) -> str:
        return self.text

    def _repr_html_(self) -> str:
        import html

        return f'<p class="course-progress course-live-note"><b>Your progress</b>: {html.escape(self.text)}</p>'


def show(chapter: str | None = None):
    """The progress table (one chapter's row and its items, or every chapter) and the file's path.

    Returns an object that renders as HTML in a notebook and as text in a terminal (make it
    the cell's last line). In the book build (``COURSE_BOOK_BUILD=1``) it is a note saying
    what the cell shows when the reader runs it: the build machine's progress means nothing
    to a reader, and a fixed note keeps the page the same from one build to the next.
    """
    if chapter is not None:
        check_chapter(chapter)
    if os.environ.get("COURSE_BOOK_BUILD") == "1":
        return _BookNote(chapter)
    return ProgressView(chapter)


def reset() -> Path | None:
    """Delete the progress file (only that file and its lock); returns its path, or None if there was none."""
    p = path()
    with contextlib.suppress(FileNotFoundError):
        p.with_name(p.name + ".lock").unlink()
    try:
        p.unlink()
    except FileNotFoundError:
        return None
    return p
