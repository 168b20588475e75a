"""``python -m course_lib progress``: the learner's progress table (and ``--reset`` to start over).

Only reads (or, with ``--reset``, deletes) the local progress file of
:mod:`course_lib.progress`; nothing is sent anywhere.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("progress", help="print your progress per chapter (exercises passed, quiz score, last run)")
    p.add_argument("--chapter", help="only this chapter (two digits, e.g. 02), item by item")
    p.add_argument("--reset", action="store_true", help="delete the progress file (asks nothing; only that file)")
    args = parser.parse_args(argv)

    from course_lib import progress

    if args.reset:
        removed = progress.reset()
        print(f"deleted {removed}" if removed else f"nothing to delete: {progress.path()} does not exist")
        return 0
    if args.chapter is not None:
        try:
            progress.check_chapter(args.chapter)
        except ValueError as e:
            parser.error(str(e))
    print(repr(progress.ProgressView(args.chapter)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
