"""The chapters' expensive runs, beside the algorithms they run (one naming rule).

``course_lib/<module>.py`` holds what a chapter teaches and tests: the algorithm, with
top-level imports and no command line. ``course_lib/experiments/<module>.py`` holds what
the chapter *runs*: training sweeps, calibration grids, latency tables, the readers of the
stored results in ``course_lib/zoo_data/`` and the command that rebuilds them. Each
experiments module defines

* ``OUTPUTS`` — the zoo_data files it writes;
* ``main(argv)`` — its command line.

A module that stores nothing defines no ``OUTPUTS`` and is not a build: ``hardware.py``
holds chapter 11's live measurement runs, which the chapter repeats on every machine.

``python -m course_lib.build --list`` lists every build; ``python -m course_lib.build moe``
runs one (labml keeps a Switch Transformer's ``experiment.py`` beside its ``__init__.py``
the same way).
"""
