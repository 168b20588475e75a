"""Write the book page "The article, checked" from the verdicts in the executed notebooks.

    python scripts/article_page.py build/executed book/article_checked.md [--strict]

Every verdict on the page was recorded by a chapter's ``claims.verdict(...)`` call when
scripts/execute_notebooks.py executed it (course_lib.claims). ``--strict`` exits 1 when a
claim of an existing chapter has no verdict, two verdicts, or a verdict without evidence.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from course_lib import claims
from course_lib.fingerprint import machine_line
from course_lib.paths import atomic_write_bytes

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("executed", type=Path, help="folder of executed notebooks (build/executed)")
    ap.add_argument("out", type=Path, help="markdown file to write (book/article_checked.md)")
    ap.add_argument("--notebooks", type=Path, default=ROOT / "notebooks", help="the chapters' sources")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a verdict is missing, doubled or empty")
    args = ap.parse_args(argv)
    found, present = claims.collect(args.executed), claims.chapters_present(args.notebooks)
    bad = claims.problems(found, present)
    atomic_write_bytes(args.out, claims.page_markdown(found, present, machine_line=machine_line()).encode())
    print(json.dumps({"claims": len(claims.CLAIMS), "with a verdict": len(found), "problems": bad}, indent=1))
    return 1 if (bad and args.strict) else 0


if __name__ == "__main__":
    sys.exit(main())
