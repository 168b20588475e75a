"""Pin every notebook's bootstrap install to the course release, not the default branch.

The bootstrap cell of ``notebooks/NN_*.py`` installs course_lib when a kernel (Colab) does
not have it. Installing ``git+REPO_URL`` takes whatever the default branch holds that day,
so a notebook could run against a library it was not written for (and anyone who can push
to the branch runs code in every reader's kernel). This rewrites the install line to the
release tag of this checkout's version::

    COURSE_VERSION = "0.1.0"  # the release this notebook was executed with
    ... f"beyond-scale-course @ git+{REPO_URL}@v{COURSE_VERSION}" ...

with ``COURSE_VERSION = course_lib.__version__``, defined on the line after ``REPO_URL``.
Run it after bumping the version (then ``make sync``); ``tests/test_packaging.py`` checks
that every notebook is pinned to the current version. It is idempotent.

    python scripts/pin_bootstrap.py            # rewrite notebooks/NN_*.py in place
    python scripts/pin_bootstrap.py --check    # exit 1, listing the notebooks not pinned
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UNPINNED = 'f"beyond-scale-course @ git+{REPO_URL}"'
PINNED = 'f"beyond-scale-course @ git+{REPO_URL}@v{COURSE_VERSION}"'
_REPO_LINE = re.compile(r"^REPO_URL = .*$", re.MULTILINE)
_CALL_LINE = re.compile(r"^( *)subprocess\.check_call\(\[(.*)" + re.escape(UNPINNED) + r"\]\)$", re.MULTILINE)
_VERSION_LINE = re.compile(r'^COURSE_VERSION = "[^"\n]*".*\n', re.MULTILINE)


def course_version() -> str:
    """``course_lib.__version__`` read from the source (no import: no torch needed)."""
    text = (ROOT / "course_lib" / "__init__.py").read_text()
    m = re.search(r'^__version__ = "([^"]+)"', text, re.MULTILINE)
    if m is None:
        raise ValueError('course_lib/__init__.py defines no __version__ = "..."')
    return m.group(1)


def pin(text: str, version: str) -> str:
    """``text`` (a notebook's percent-format source) with its bootstrap pinned to ``version``."""
    if _REPO_LINE.search(text) is None:
        raise ValueError("the notebook has no `REPO_URL = ...` line (copy the bootstrap cell from 01_baseline.py)")
    if UNPINNED not in text and PINNED not in text:
        raise ValueError(f"the notebook's bootstrap installs neither {UNPINNED} nor {PINNED}")
    text = _VERSION_LINE.sub("", text)
    repo = _REPO_LINE.search(text)
    line = f'COURSE_VERSION = "{version}"  # the release this notebook was written for (scripts/pin_bootstrap.py)\n'
    text = text[: repo.end() + 1] + line + text[repo.end() + 1 :]
    # the pinned call is longer than a line: write it the way `ruff format` lays it out
    text = _CALL_LINE.sub(lambda m: f"{m[1]}subprocess.check_call(\n{m[1]}    [{m[2]}{PINNED}]\n{m[1]})", text)
    return text.replace(UNPINNED, PINNED)


def pinned_version(text: str) -> str | None:
    """The version a notebook's bootstrap installs, or None when it installs the default branch."""
    m = _VERSION_LINE.search(text)
    if m is None or PINNED not in text or UNPINNED in text:
        return None
    return re.match(r'COURSE_VERSION = "([^"\n]*)"', m.group(0)).group(1)


def notebooks() -> list[Path]:
    return sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a notebook is not pinned")
    args = parser.parse_args(argv)
    version = course_version()
    stale = []
    for path in notebooks():
        text = path.read_text()
        new = pin(text, version)
        if new != text:
            stale.append(path.name)
            if not args.check:
                path.write_text(new)
    verb = "not pinned to" if args.check else "pinned to"
    print(f"{len(stale)} notebook(s) {verb} v{version}: {', '.join(stale) or '-'}")
    if stale and not args.check:
        print("now run:  make sync   (pairs the .ipynb files), then ruff format notebooks/")
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
