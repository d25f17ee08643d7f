"""Every notebook in ``notebooks/`` (subfolders included) is a tested artefact.

Executed (``slow``): each runs top to bottom with nbclient in a fresh kernel with
``MEDLAB_FAST=1`` (its parameters cell reads it: fewer epochs, smaller phantoms; every cell still
runs), with the network guard of ``tests/offline_guard`` (nothing may leave the machine), within
its time limit; its time is printed and, with ``MEDLAB_NOTEBOOK_TIMES=file``, appended to that
file as a JSON line. Cells tagged ``raises-exception`` must raise (the error named in
``metadata.medlab.expected_error``, when given); every exercise check says ✓ to the answer stored
in the notebook and ✗ with a reason to each wrong answer listed in its metadata.

Static, per notebook and per check (so a failure names both):

====================  ======================================================================
check                 the notebook ...
====================  ======================================================================
no_outputs            is stored without outputs or execution counts
valid                 is valid nbformat 4 with the python3 kernel
title                 starts with a markdown cell ``# Title``
learning_objectives   has a heading or a bold lead-in "Learning objectives" / "You will learn"
parameters            has one code cell tagged ``parameters`` that reads ``MEDLAB_FAST`` from
                      ``os.environ`` (CI's settings come from there, never from editing code)
own_data              has a markdown heading about running it on your own data
no_absolute_paths     has no absolute path in code or text (``"/home/..."``, ``C:\\...``, ``~/``)
exercises             has at least two exercises (a code cell tagged ``exercise``, or the first
                      code cell after a markdown ``**Exercise N.**``), each calling a
                      ``check_...(...)`` function and listing wrong answers (argument lists) in
                      its ``metadata.medlab.wrong_answers``
====================  ======================================================================

The conventions are explained for authors in ``notebooks/README.md``.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import nbformat
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from notebook_runner import CANARY, NOTEBOOK_DIR, execute, notebooks, output_text

NOTEBOOKS = notebooks()
IDS = [str(p.relative_to(NOTEBOOK_DIR).with_suffix("")) for p in NOTEBOOKS]

DEFAULT_TIME_LIMIT = 300.0
"""Seconds a notebook may take with ``MEDLAB_FAST=1`` unless it says otherwise below or in
``metadata.medlab.time_limit``; ``MEDLAB_TIME_LIMIT_SCALE`` multiplies every limit (a slower CI)."""
TIME_LIMITS = {"00_start_here": 150.0, "02_preprocessing": 300.0, "03_segmentation_classic": 300.0,
               "04_segmentation_unet": 600.0}
"""About 2.5-6x the times measured with MEDLAB_FAST=1 on this 2-core machine under a load average of
about 15 (22.6, 57.3, 59.6 and 214 s): tight enough to catch a notebook that doubles, loose enough
for a shared machine."""
TIME_LIMITS.update({"01_brain_tumour_mri": 360.0, "02_chest_ct_nodules": 300.0, "03_real_scans": 150.0,
                    "04_multimodal_fusion": 150.0, "05_mammography": 200.0})
"""The case studies (``notebooks/case_studies/``), with MEDLAB_FAST=1 and the shipped U-Nets, under a
load average of 10-15 on this 2-core machine: 111-180, 124-133, 27-38, 19-33 and 49-53 s (about 37, 32,
14, 10 and 18 CPU-s); the limits leave 2-5x for a loaded CI."""
TIME_LIMITS["06_fast_models"] = 240.0
"""Distillation (200 steps) and 8 timed variants: 107 s with MEDLAB_FAST=1 under a load average of 5 (56-70 s at 1-2)."""

MIN_EXERCISES = 2
CHECK_CALL = re.compile(r"\b(check_\w+)\s*\(")


def read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def markdown_headings(nb) -> list[str]:
    return [line.lstrip("#").strip() for c in nb.cells if c.cell_type == "markdown"
            for line in c.source.splitlines() if re.match(r"^#{1,6}\s", line)]


def tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def medlab_meta(cell_or_nb) -> dict:
    return dict(cell_or_nb.get("metadata", {}).get("medlab", {}))


EXERCISE_TEXT = re.compile(r"\*\*Exercise\b|^#{1,6}\s*Exercise\b", re.MULTILINE)


def exercise_cells(nb) -> list[tuple[int, object]]:
    """Code cells tagged ``exercise``, and the first code cell after a markdown cell that poses one
    (``**Exercise N.**`` or a heading "Exercise ...")."""
    out, posed = [], False
    for i, c in enumerate(nb.cells):
        if c.cell_type == "markdown":
            posed = posed or bool(EXERCISE_TEXT.search(c.source))
        elif c.cell_type == "code":
            if "exercise" in tags(c) or posed:
                out.append((i, c))
            posed = False
    return out


# ---------------------------------------------------------------------------- static checks
def check_no_outputs(nb) -> list[str]:
    return [f"cell {i} has outputs or an execution count" for i, c in enumerate(nb.cells)
            if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count") is not None)]


def check_valid(nb) -> list[str]:
    problems = []
    try:
        nbformat.validate(nb)
    except nbformat.ValidationError as exc:
        problems.append(f"invalid nbformat: {str(exc)[:200]}")
    if nb.metadata.get("kernelspec", {}).get("name") != "python3":
        problems.append("kernelspec is not python3")
    return problems


def check_title(nb) -> list[str]:
    first = nb.cells[0] if nb.cells else None
    if first is None or first.cell_type != "markdown" or not re.match(r"^# \S", first.source):
        return ["the first cell is not a markdown title '# ...'"]
    return []


def check_learning_objectives(nb) -> list[str]:
    lead_ins = [line for c in nb.cells if c.cell_type == "markdown" for line in c.source.splitlines()
                if line.startswith("**")]
    if any(re.search(r"learning objectives|you will learn", h, re.IGNORECASE) for h in markdown_headings(nb) + lead_ins):
        return []
    return ["no 'Learning objectives' / 'You will learn' heading or bold lead-in"]


def check_parameters(nb) -> list[str]:
    cells = [c for c in nb.cells if c.cell_type == "code" and "parameters" in tags(c)]
    if len(cells) != 1:
        return [f"{len(cells)} code cells tagged 'parameters' (need exactly one)"]
    src = cells[0].source
    if "MEDLAB_FAST" not in src or not re.search(r"os\.environ|os\.getenv", src):
        return ["the parameters cell does not read MEDLAB_FAST from os.environ"]
    return []


def check_own_data(nb) -> list[str]:
    if any(re.search(r"own (data|scans?|images?)", h, re.IGNORECASE) for h in markdown_headings(nb)):
        return []
    return ["no markdown heading about running it on your own data"]


ABSOLUTE_IN_CODE = re.compile(r"""(['"])(/(?:home|root|tmp|work|Users|mnt|opt|var|data|srv)\b[^'"]*"""
                              r"""|/[A-Za-z][\w.-]*/[^'"]*|~[/\\][^'"]*|[A-Za-z]:\\[^'"]*)\1""")
ABSOLUTE_IN_TEXT = re.compile(r"(?<![\w.:/])(/(?:home|root|tmp|work|Users|mnt)/\S+|[A-Za-z]:\\\S+|~/\S+)")


def check_no_absolute_paths(nb) -> list[str]:
    problems = []
    for i, c in enumerate(nb.cells):
        pattern = ABSOLUTE_IN_CODE if c.cell_type == "code" else ABSOLUTE_IN_TEXT
        for m in pattern.finditer(c.source):
            problems.append(f"cell {i}: absolute path {m.group(0)[:60]}")
    return problems


def check_exercises(nb) -> list[str]:
    cells = exercise_cells(nb)
    problems = [] if len(cells) >= MIN_EXERCISES else [
        f"{len(cells)} exercises (need at least {MIN_EXERCISES})"]
    for i, c in cells:
        if not CHECK_CALL.search(c.source):
            problems.append(f"exercise cell {i} calls no check_...() function")
        wrong = medlab_meta(c).get("wrong_answers")
        if not (isinstance(wrong, list) and wrong and all(isinstance(w, str) and w.strip() for w in wrong)):
            problems.append(f"exercise cell {i} lists no wrong answers in metadata.medlab.wrong_answers")
    return problems


STATIC_CHECKS = {name.removeprefix("check_"): f for name, f in dict(globals()).items()
                 if name.startswith("check_") and callable(f)}


@pytest.mark.parametrize("check", list(STATIC_CHECKS))
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_static(path, check):
    problems = STATIC_CHECKS[check](read(path))
    assert not problems, f"{path.name} fails '{check}': " + "; ".join(problems)


def test_static_checks_catch_problems():
    """Each check fails on a notebook that breaks its rule (so the checks above can fail)."""
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    bad = new_notebook(cells=[new_code_cell("x = 1", execution_count=1, outputs=[
        nbformat.v4.new_output("stream", text="1")]),
        new_markdown_cell("Some text with /home/alice/scan.nii"),
        new_code_cell('load("/work/data/ct.nii.gz"); p = "C:\\\\scans\\\\a"', metadata={"tags": ["exercise"]})])
    for name, check in STATIC_CHECKS.items():
        assert check(bad), f"check {name} passed a notebook that breaks it"
    good = new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                 "language": "python"}}, cells=[
        new_markdown_cell("# A title\n\n## Learning objectives\n- one"),
        new_code_cell('import os\nFAST = os.environ.get("MEDLAB_FAST") == "1"', metadata={"tags": ["parameters"]}),
        new_code_cell("check_a(1)", metadata={"tags": ["exercise"], "medlab": {"wrong_answers": ["2"]}}),
        new_code_cell("check_b(x, '/')", metadata={"tags": ["exercise"], "medlab": {"wrong_answers": ["0, 'a'"]}}),
        new_markdown_cell("## Run it on your own data\nmedlab.load('my_scans/') reads https://example.org/a/b"),
    ])
    assert {name: check(good) for name, check in STATIC_CHECKS.items()} == {key: [] for key in STATIC_CHECKS}


# ---------------------------------------------------------------------------- executed
def wrong_answer_cells(nb) -> list[tuple[int, str, str]]:
    """``(cell index, check function, arguments)`` for every wrong answer of every exercise."""
    out = []
    for i, c in exercise_cells(nb):
        m = CHECK_CALL.search(c.source)
        for args in medlab_meta(c).get("wrong_answers", []) if m else []:
            out.append((i, m.group(1), args))
    return out


def probe(i: int, function: str, args: str) -> str:
    return (f"import contextlib as _cl, io as _io, json as _json\n_buf = _io.StringIO()\n"
            f"with _cl.redirect_stdout(_buf):\n    _ret = {function}({args})\n"
            f"print('MEDLAB-EXERCISE ' + _json.dumps({{'cell': {i}, 'args': {args!r}, "
            f"'text': _buf.getvalue() + ('' if _ret is None else str(_ret))}}))")


def time_limit(path: Path, nb) -> float:
    limit = float(medlab_meta(nb).get("time_limit") or TIME_LIMITS.get(path.stem, DEFAULT_TIME_LIMIT))
    return limit * float(os.environ.get("MEDLAB_TIME_LIMIT_SCALE", "1"))


def run_and_verify(path: Path, workdir: Path, limit: float | None = None) -> tuple[float, list[str]]:
    """Execute a notebook as CI does and return its time and every rule it broke."""
    nb0 = read(path)
    wrong = wrong_answer_cells(nb0)
    limit = time_limit(path, nb0) if limit is None else limit
    run = execute(path, workdir, extra_cells=[probe(*w) for w in wrong] + [CANARY], timeout=limit)
    problems = []
    cells = run.original_cells
    if not all(c.get("execution_count") for c in cells if c.cell_type == "code"):
        problems.append("a code cell did not run")
    if run.seconds > limit:
        problems.append(f"took {run.seconds:.0f} s, over its limit of {limit:.0f} s")
    for i, c in enumerate(cells):        # expected errors happened, and are the ones announced
        if c.cell_type == "code" and "raises-exception" in tags(c):
            errors = [o for o in c.outputs if o.output_type == "error"]
            expected = medlab_meta(c).get("expected_error")
            if not errors:
                problems.append(f"cell {i} is tagged raises-exception but raised nothing")
            elif expected is not None and errors[0].ename != expected:
                problems.append(f"cell {i} raised {errors[0].ename}, not the expected {expected}")
    for i, _ in exercise_cells(nb0):     # the stored answer is accepted ...
        if "✓" not in output_text(cells[i]):
            problems.append(f"exercise cell {i} does not say ✓ to the stored answer")
    if "✗" in "\n".join(output_text(c) for c in cells):
        problems.append("an exercise check says ✗ to the stored answer")
    probes = [json.loads(line.split("MEDLAB-EXERCISE ", 1)[1]) for c in run.appended_cells
              for line in output_text(c).splitlines() if line.startswith("MEDLAB-EXERCISE ")]
    if len(probes) != len(wrong):
        problems.append(f"{len(wrong) - len(probes)} wrong-answer probe(s) did not run")
    for p in probes:                     # ... and each wrong answer refused with a reason
        reason = p["text"].split("✗", 1)[1] if "✗" in p["text"] else ""
        if len(reason.split()) < 3:
            problems.append(f"exercise cell {p['cell']}: wrong answer {p['args']} got {p['text'][:80]!r}, "
                            "not ✗ with a reason")
    if not run.guarded_pids():           # offline: the guard ran in the kernel and refused the canary ...
        problems.append("the network guard was not active in the kernel")
    if not [e for e in run.refused() if "203.0.113.7" in e["target"]]:
        problems.append("the guard did not refuse the canary connection")
    others = [e for e in run.refused() if "203.0.113.7" not in e["target"]]
    if others:                           # ... and nothing else tried to leave
        problems.append(f"tried to reach the network: {[(e['kind'], e['target']) for e in others[:3]]}")
    return run.seconds, problems


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_runs_fast_offline_and_checks(path, tmp_path, record_property):
    limit = time_limit(path, read(path))
    seconds, problems = run_and_verify(path, tmp_path, limit)
    record_property("seconds", round(seconds, 1))
    print(f"{path.name}: {seconds:.1f} s (limit {limit:.0f} s, MEDLAB_FAST=1)")
    if os.environ.get("MEDLAB_NOTEBOOK_TIMES"):
        with open(os.environ["MEDLAB_NOTEBOOK_TIMES"], "a", encoding="utf-8") as f:
            f.write(json.dumps({"notebook": str(path.relative_to(NOTEBOOK_DIR)), "seconds": round(seconds, 1),
                                "limit": limit, "fast": True}) + "\n")
    assert not problems, f"{path.name}: " + "; ".join(problems)


def test_execution_checks_can_fail(tmp_path):
    """The executed checks pass a notebook that keeps the rules and catch one that breaks them."""
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    def write(name, cells):
        nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                                "language": "python"}})
        path = tmp_path / name
        nbformat.write(nb, path)
        return path

    check = ('def check_answer(n):\n    if n == 4:\n        print("✓ right: 2 + 2 is 4")\n'
             '    else:\n        print(f"✗ {n} is not 2 + 2: add the two numbers")\n')
    good = write("good.ipynb", [
        new_code_cell('import os\nFAST = os.environ.get("MEDLAB_FAST") == "1"\nassert FAST',
                      metadata={"tags": ["parameters"]}),
        new_markdown_cell("**Exercise 1.** What is 2 + 2?"),
        new_code_cell(check + "check_answer(4)", metadata={"medlab": {"wrong_answers": ["5", "3"]}}),
        new_code_cell("import medlab\nmedlab.data.brain_mri(seed=-1)", metadata={
            "tags": ["raises-exception"], "medlab": {"expected_error": "ParameterError"}}),
    ])
    _seconds, problems = run_and_verify(good, tmp_path, limit=120)
    assert problems == [], problems
    bad = write("bad.ipynb", [
        new_markdown_cell("**Exercise 1.** What is 2 + 2?"),
        new_code_cell('def check_answer(n):\n    print("✓ right")\ncheck_answer(4)',
                      metadata={"medlab": {"wrong_answers": ["5"]}}),
        new_code_cell("x = 1", metadata={"tags": ["raises-exception"]}),
        new_code_cell("import urllib.request\ntry:\n    urllib.request.urlopen('http://example.org', timeout=2)\n"
                      "except OSError as e:\n    print('refused', e)"),
    ])
    _, problems = run_and_verify(bad, tmp_path, limit=120)
    text = " | ".join(problems)
    assert "raised nothing" in text and "wrong answer 5" in text and "example.org" in text, text
