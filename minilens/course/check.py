"""The grader of the course assignments:
``python -m minilens.course.check tutorials/assignment_logit_lens.py`` (or
``tutorials/assignment_patching.py``; ``--json`` for course platforms).

It imports the student's file, tells from the functions it defines which assignment it is, runs
each part, and compares the answers with minilens's own numbers (lens_grader.py and
patching_grader.py hold the parts, grading.py the comparison). A failed part says what to look
at: the grader also computes the usual mistakes and names the one the answer matches.

Student code can raise anything, or not be finished: an exception becomes a failed part
(NotImplementedError: TODO) that quotes the student's own line, never a crash of the grader.
Exit status: 0 only when every part passes; 1 otherwise; 2 when the file cannot be found or is
not an assignment.

``--json`` prints the results in Gradescope's results.json layout
(https://gradescope-autograders.readthedocs.io/en/latest/specs/): a top-level ``score`` and
``output``, and ``tests``, one per part, each with ``name``, ``score``, ``max_score``, ``status``
("passed" or "failed") and ``output`` (the hint). One point per part. A Gradescope
``run_autograder`` script can end with
``python -m minilens.course.check --json /autograder/submission/assignment_patching.py >
/autograder/results/results.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from . import lens_grader, patching_grader
from .grading import Unfinished, short_error

PROG = "python -m minilens.course.check"
ASSIGNMENTS = (lens_grader, patching_grader)


@dataclass
class PartResult:
    label: str          # "Part 1"
    name: str           # the functions it grades
    status: str         # "PASS", "FAIL" or "TODO"
    detail: str         # what matched, or the hint


def which_assignment(path: Path):
    """The grader module of the assignment in ``path``, told from the functions the file defines
    (read as text, so that a file with a syntax error is still recognised). InputError if it is
    not an assignment."""
    names = " or ".join(a.TEMPLATE for a in ASSIGNMENTS)
    if path.suffix != ".py":
        raise InputError(f"{path} is not an assignment: the grader takes a Python file, your "
                         f"copy of {names} with your code in it.")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path} cannot be read as a Python file ({e}); give your copy of "
                         f"{names}.") from None
    defined = set(re.findall(r"^[ \t]*def[ \t]+(\w+)", text, re.M))
    found = max(ASSIGNMENTS, key=lambda a: len(defined & set(a.FUNCTIONS)))
    if not defined & set(found.FUNCTIONS):
        raise InputError(f"{path} is not an assignment: it defines none of the functions of "
                         + "; ".join(f"{a.TEMPLATE} ({', '.join(a.FUNCTIONS)})"
                                     for a in ASSIGNMENTS)
                         + ". Start from one of those templates.")
    return found


def import_student(path: Path):
    spec = importlib.util.spec_from_file_location("student_assignment", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_parts(path: str | Path, models: list[str] | None = None,
              out=None) -> tuple[object, list[PartResult]]:
    """Grade one file: (its assignment's grader module, one result per part).

    ``models``: the models to grade on (names for ml.load), instead of the assignment's own
    choice. ``out``: where to print each part's line as it is graded (None: nowhere)."""
    path = Path(path)
    assignment = which_assignment(path)

    def report(result: PartResult) -> PartResult:
        if out is not None:
            print(f"  [{result.status}] {result.label}  {result.name}: {result.detail}", file=out)
        return result

    try:
        module = import_student(path)
    except BaseException as e:  # a syntax error, an import that fails, even sys.exit at import time
        if isinstance(e, KeyboardInterrupt):
            raise
        message = f"the file does not import: {short_error(e, path)}"
        return assignment, [report(PartResult(label, name, "FAIL", message))
                            for label, name, _ in assignment.PARTS]
    results = []
    with tempfile.TemporaryDirectory(prefix="minilens-check-") as tmp:
        cases = assignment.build_cases(Path(tmp), models)
        if out is not None:
            print(f"  graded on: {assignment.describe(cases)}", file=out)
        for label, name, part in assignment.PARTS:
            try:
                with np.errstate(all="ignore"):
                    message = part(module, cases)
                status = "PASS" if message is None else "FAIL"
                detail = "matches minilens" if message is None else message
            except (NotImplementedError, Unfinished) as e:
                status, detail = "TODO", f"not done yet ({e})"
            except BaseException as e:
                if isinstance(e, KeyboardInterrupt):
                    raise
                status, detail = "FAIL", f"your code raised {short_error(e, path)}"
            results.append(report(PartResult(label, name, status, detail)))
    return assignment, results


def summary(results: list[PartResult]) -> str:
    n = sum(r.status == "PASS" for r in results)
    return f"{n} of {len(results)} parts pass." + (" Well done." if n == len(results) else "")


def grade(path: str | Path, out=None, models: list[str] | None = None) -> dict[str, str]:
    """Grade one file, printing a line per part to ``out`` (default stdout); returns
    {part: "PASS" | "FAIL" | "TODO"}."""
    out = out or sys.stdout
    path = Path(path)
    assignment = which_assignment(path)
    print(f"{PROG}: grading {path} (the {assignment.NAME} assignment)", file=out)
    _, results = run_parts(path, models, out)
    print(summary(results), file=out)
    return {r.label: r.status for r in results}


def gradescope_json(results: list[PartResult]) -> dict:
    """Gradescope's results.json: one test per part, one point each."""
    tests = [{"name": f"{r.label}: {r.name}", "score": float(r.status == "PASS"),
              "max_score": 1.0, "status": "passed" if r.status == "PASS" else "failed",
              "output": f"[{r.status}] {r.detail}"} for r in results]
    return {"score": sum(t["score"] for t in tests), "output": summary(results), "tests": tests}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Grade a course assignment: each part PASS, FAIL (with a hint "
                               "that names the mistake) or TODO. Exit 0 only if every part "
                               "passes.")
    parser.add_argument("path", metavar="PATH",
                        help="your assignment, e.g. tutorials/assignment_logit_lens.py or "
                             "tutorials/assignment_patching.py")
    parser.add_argument("--json", action="store_true",
                        help="print the results as JSON in Gradescope's results.json layout "
                             "(score, and one test per part with its hint) instead of text")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    path = Path(args.path)
    try:
        if not path.is_file():
            raise InputError(f"{path} is not a file. Give the path of your assignment, "
                             f"e.g. {lens_grader.TEMPLATE}.")
        if args.json:
            _, results = run_parts(path)
        else:
            results = [PartResult(label, "", status, "")
                       for label, status in grade(path).items()]
    except InputError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        if args.json:
            print(json.dumps({"score": 0.0, "output": str(e), "tests": []}, indent=1))
        return 2
    if args.json:
        print(json.dumps(gradescope_json(results), indent=1))
    return 0 if all(r.status == "PASS" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
