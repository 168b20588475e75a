"""The learner's progress file (course_lib.progress) and ``python -m course_lib progress``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from course_lib import progress, quiz

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def pfile(tmp_path, monkeypatch):
    p = tmp_path / "data" / "progress.json"
    monkeypatch.setenv("COURSE_PROGRESS", str(p))
    monkeypatch.delenv("COURSE_BOOK_BUILD", raising=False)
    monkeypatch.setattr(progress, "_warned", False)
    return p


def test_path_from_env(pfile):
    assert progress.path() == pfile
    progress.record("02", "exercise", "02 · x", passed=True)
    assert pfile.is_file(), "the folder is created on the first record"


def test_default_path_is_per_user_and_outside_the_repository(monkeypatch, tmp_path):
    monkeypatch.delenv("COURSE_PROGRESS", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("USERPROFILE", str(tmp_path))
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setenv("APPDATA", str(tmp_path / "AppData" / "Roaming"))
    p = progress.path()
    assert p.name == "progress.json" and "beyond-scale" in p.parts
    assert tmp_path in p.parents and ROOT not in p.parents
    if sys.platform.startswith("linux"):
        assert p == tmp_path / ".local" / "share" / "beyond-scale" / "progress.json"
        monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
        assert progress.path() == tmp_path / "xdg" / "beyond-scale" / "progress.json"


def test_record_and_summary(pfile, tmp_path, monkeypatch):
    bank = tmp_path / "bank"
    bank.mkdir()
    (bank / "ch02.json").write_text(json.dumps(_quiz("02", 4)), encoding="utf-8")
    monkeypatch.setattr(quiz, "BANK_DIR", bank)
    progress.record("02", "exercise", "02 · a", passed=False)
    progress.record("02", "exercise", "02 · a", passed=True)
    progress.record("02", "exercise", "02 · a", passed=False)  # a later broken edit keeps the pass
    progress.record("02", "exercise", "02 · b", passed=None)  # the stub: seen, not attempted
    progress.record("02", "prediction", "02 · predict", passed=True, score=2.5)
    progress.record("02", "quiz", "q1", passed=False)
    progress.record("02", "quiz", "q1", passed=True)
    progress.record("02", "quiz", "q2", passed=False)
    progress.record("05", "exercise", "05 · c", passed=None)
    s = progress.summary()
    assert list(s) == ["02", "05"]
    assert s["02"]["exercises_passed"] == 2 and s["02"]["exercises_attempted"] == 2 and s["02"]["exercises_seen"] == 3
    assert (s["02"]["quiz_right"], s["02"]["quiz_answered"], s["02"]["quiz_questions"]) == (1, 2, 4)
    assert s["05"]["exercises_attempted"] == 0 and s["05"]["quiz_questions"] is None
    assert s["02"]["last_run"].endswith("Z") and len(s["02"]["last_run"]) == 20
    data = json.loads(pfile.read_text())
    assert data["chapters"]["02"]["prediction:02 · predict"]["score"] == 2.5
    assert data["chapters"]["02"]["quiz:q1"]["first_try"] is False


@pytest.mark.parametrize(
    "args, message",
    [
        (("2", "exercise", "x"), "chapter must be a two-digit string"),
        (("02", "homework", "x"), "kind must be one of"),
        (("02", "exercise", ""), "item must be a non-empty str"),
    ],
)
def test_record_rejects_bad_arguments(pfile, args, message):
    with pytest.raises(ValueError, match=message):
        progress.record(*args, passed=True)
    with pytest.raises(ValueError, match="passed must be True, False or None"):
        progress.record("02", "exercise", "x", passed="yes")
    with pytest.raises(ValueError, match="score must be a number"):
        progress.record("02", "exercise", "x", passed=True, score="high")


def test_write_is_atomic(pfile, monkeypatch):
    progress.record("02", "exercise", "02 · a", passed=True)
    before = pfile.read_bytes()

    def broken_dump(obj, f, **kw):
        f.write('{"chapters": {"02": ')  # half a file, then the disk fills up
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(progress.json, "dump", broken_dump)
    with pytest.warns(UserWarning, match="No space left on device"):
        progress.record("02", "exercise", "02 · b", passed=True)
    assert pfile.read_bytes() == before, "the old file is intact"
    assert sorted(p.name for p in pfile.parent.iterdir()) == ["progress.json", "progress.json.lock"], (
        "no temporary file left behind"
    )


def test_warns_once_when_the_file_cannot_be_written(tmp_path, monkeypatch):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    monkeypatch.setenv("COURSE_PROGRESS", str(blocker / "progress.json"))
    monkeypatch.setattr(progress, "_warned", False)
    with pytest.warns(UserWarning, match="cannot write the progress file") as caught:
        progress.record("02", "exercise", "x", passed=True)
        progress.record("02", "exercise", "y", passed=True)
    assert len([w for w in caught if "progress file" in str(w.message)]) == 1


@pytest.mark.parametrize(
    "content", [b"{not json", b"[]", b'{"chapters": 3}', b'{"chapters": {"02": [1]}}', b"\x00\x01", b"\xff\xfe{"]
)
def test_corrupt_file_is_set_aside_and_a_fresh_one_started(pfile, content):
    pfile.parent.mkdir(parents=True)
    pfile.write_bytes(content)
    with pytest.warns(UserWarning, match="was not valid"):
        progress.record("03", "exercise", "03 · a", passed=True)
    assert pfile.with_name("progress.json.corrupt").read_bytes() == content, "the learner's old file is kept aside"
    assert progress.summary()["03"]["exercises_passed"] == 1


def test_concurrent_writers_lose_nothing(pfile):
    """Two kernels recording at once (a lock around read-change-write): every record survives."""
    script = textwrap.dedent(
        """
        import sys
        from course_lib import progress
        for i in range(15):
            progress.record("02", "exercise", f"{sys.argv[1]}-{i}", passed=True)
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, name], cwd=ROOT, env={**os.environ}) for name in ("a", "b", "c")
    ]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    assert progress.summary()["02"]["exercises_passed"] == 45


def test_show_table_and_path(pfile):
    empty = progress.show()
    assert "No progress recorded" in repr(empty) and str(pfile) in repr(empty)
    progress.record("02", "exercise", "02 · a", passed=True)
    progress.record("03", "exercise", "03 · b", passed=False)
    view = progress.show()
    text, page = repr(view), view._repr_html_()
    assert "1 of 1 attempted" in text and "0 of 1 attempted" in text and str(pfile) in text
    assert "<table" in page and str(pfile) in page and "nothing is sent anywhere" in page
    one = repr(progress.show("03"))
    assert "03 · b" in one and "02 · a" not in one and "failed" in one
    with pytest.raises(ValueError, match="two-digit"):
        progress.show("3")


def test_book_build_shows_a_fixed_note(pfile, monkeypatch):
    progress.record("02", "exercise", "02 · a", passed=True)
    monkeypatch.setenv("COURSE_BOOK_BUILD", "1")
    note = progress.show("02")
    assert "<table" not in note._repr_html_() and str(pfile) not in repr(note)
    assert repr(note) == repr(progress.show("02")), "the same on every build"
    assert "python -m course_lib progress" in repr(note)


def _cli(*args, env_path: Path):
    env = {**os.environ, "COURSE_PROGRESS": str(env_path)}
    return subprocess.run(
        [sys.executable, "-m", "course_lib", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_cli_prints_the_table_and_resets_only_that_file(pfile):
    progress.record("05", "exercise", "05 · a", passed=True)
    neighbour = pfile.parent / "keep.json"
    neighbour.write_text("{}")
    out = _cli("progress", env_path=pfile)
    assert out.returncode == 0, out.stderr
    assert "05" in out.stdout and "1 of 1 attempted" in out.stdout and str(pfile) in out.stdout
    out = _cli("progress", "--chapter", "05", env_path=pfile)
    assert out.returncode == 0 and "05 · a" in out.stdout
    out = _cli("progress", "--chapter", "5", env_path=pfile)
    assert out.returncode == 2 and "two-digit" in out.stderr
    out = _cli("progress", "--reset", env_path=pfile)
    assert out.returncode == 0 and f"deleted {pfile}" in out.stdout
    assert not pfile.exists() and neighbour.exists()
    out = _cli("progress", "--reset", env_path=pfile)
    assert out.returncode == 0 and "nothing to delete" in out.stdout


def _quiz(chapter: str, n: int) -> dict:
    return {
        "chapter": chapter,
        "title": "t",
        "questions": [
            {"id": f"q{i}", "kind": "number", "prompt": "how many?", "answer": 1.0, "tolerance": 0.1, "why": "one"}
            for i in range(n)
        ],
    }
