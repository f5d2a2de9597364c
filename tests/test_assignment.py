"""The course assignments and their grader (``python -m minilens.course.check``).

For each assignment: the untouched template grades as all-TODO without a crash; the solution
passes every part; and the usual mistakes, planted into copies of the solution, fail with the hint
that names them (that is what makes the grader teach). Broken files (syntax errors, exceptions at
import or inside a function) become failed parts that quote the student's own line, never a
traceback from the grader or one of its own line numbers. A file that is not an assignment is a
usage error, said once. ``--json`` writes Gradescope's results.json layout.

The patching assignment grades on SmolLM2 when it is fetched, else on the shipped Llama. The
planted mistakes run on the shipped Llama (``models=``), which is quick; the solution also passes
on SmolLM2 (skipped until `minilens fetch smollm2`, a failure in CI).
"""

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from _real_model import smollm2_path
from minilens import load
from minilens.course import check, lens_grader, patching_grader

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "tutorials"
LENS_TEMPLATE = TUTORIALS / "assignment_logit_lens.py"
LENS_SOLUTION = TUTORIALS / "solutions" / "assignment_logit_lens.py"
PATCH_TEMPLATE = TUTORIALS / "assignment_patching.py"
PATCH_SOLUTION = TUTORIALS / "solutions" / "assignment_patching.py"
SHIPPED = ["shakespeare-llama"]
# Grader modules that must never appear in a student's message (their line numbers mean nothing).
GRADER_FILES = ("check.py", "grading.py", "lens_grader.py", "patching_grader.py")


def grade(path, models=None):
    out = io.StringIO()
    results = check.grade(path, out=out, models=models)
    return results, out.getvalue()


def run_check(*args, env=None):
    return subprocess.run([sys.executable, "-m", "minilens.course.check", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT,
                          env=None if env is None else dict(os.environ, **env))


def plant(tmp_path, solution: Path, replacements) -> Path:
    """A copy of the solution with (old, new) replacements; each old text must be there once."""
    source = solution.read_text()
    for old, new in replacements:
        assert source.count(old) == 1, f"the solution changed; update the planted text {old!r}"
        source = source.replace(old, new)
    path = tmp_path / "student.py"
    path.write_text(source)
    return path


def part_line(out: str, part: str) -> str:
    return next(line for line in out.splitlines() if f"] {part} " in line)


# ------------------------------------------------------------------------------------------
# The first assignment: the logit lens
# ------------------------------------------------------------------------------------------

def test_lens_template_is_all_todo_and_the_grader_does_not_crash():
    p = run_check(LENS_TEMPLATE)
    assert p.returncode == 1, "an unfinished assignment must not exit 0"
    assert "Traceback" not in p.stdout + p.stderr
    lines = [line for line in p.stdout.splitlines() if line.strip().startswith("[")]
    assert len(lines) == len(lens_grader.PARTS) and all("[TODO]" in line for line in lines), (
        p.stdout)
    assert "0 of 4 parts pass" in p.stdout


def test_lens_solution_passes_every_part():
    p = run_check(LENS_SOLUTION)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.count("[PASS]") == len(lens_grader.PARTS)


@pytest.mark.parametrize("template, names", [(LENS_TEMPLATE, lens_grader.FUNCTIONS),
                                             (PATCH_TEMPLATE, patching_grader.FUNCTIONS)],
                         ids=["logit_lens", "patching"])
def test_template_functions_raise_not_implemented(template, names):
    ns = {}
    exec(compile(template.read_text(), str(template), "exec"), ns)
    for name in names:
        with pytest.raises(NotImplementedError):
            ns[name](*([None] * ns[name].__code__.co_argcount))


LENS_MISTAKES = {
    # name: ([(text in the solution, the mistake), ...], the part that must fail, a fragment of
    # the hint it must print)
    "eps outside the sqrt": (
        [("s = np.sqrt((x * x).mean(-1, keepdims=True) + eps)      # RMSNorm",
          "s = np.sqrt((x * x).mean(-1, keepdims=True)) + eps      # RMSNorm")],
        "Part 1", "eps inside the sqrt"),
    "no gamma": ([("y = x / s * gamma\n", "y = x / s\n")], "Part 1", "gamma"),
    "layernorm not centred": ([(("        x = x - x.mean(-1, keepdims=True)"
                                "                       # LayerNorm centres first"),
                                "        pass")], "Part 1", "centre"),
    "layernorm with the unbiased variance": (
        [(("        # then the variance: eps inside the sqrt\n"
          "        s = np.sqrt((x * x).mean(-1, keepdims=True) + eps)\n"),
          "        s = np.sqrt(x.var(-1, ddof=1, keepdims=True) + eps)\n")],
        "Part 1", "biased variance"),
    "lens without the norm": ([("logits = final_norm(resid, gamma, beta, eps, kind) @ W_U",
                                "logits = resid @ W_U")], "Part 2", "through the final norm"),
    "lens without b_U": ([("return logits if b_U is None else logits + b_U", "return logits")],
                         "Part 2", "unembedding bias b_U"),
    "entropy in bits": ([("return -(np.exp(log_p) * log_p).sum(-1)",
                          "return -(np.exp(log_p) * log_p).sum(-1) / np.log(2)")],
                        "Part 3", "natural log"),
    "entropy without the max subtracted": ([("    z = logits - logits.max(-1, keepdims=True)\n",
                                             "    z = logits\n")],
                                           "Part 3", "Subtract the row max"),
    "KL without the max subtracted": ([("        z = z - z.max(-1, keepdims=True)\n",
                                        "        z = 1 * z\n")],
                                      "Part 3", "Subtract the row max"),
    "KL reversed": ([("return (np.exp(log_p_final) * (log_p_final - log_p)).sum(-1)",
                      "return (np.exp(log_p) * (log_p - log_p_final)).sum(-1)")],
                    "Part 3", "wrong way round"),
    "divisor not frozen": ([("return (c / s * gamma) @ W_U[:, target]",
                             ("return (c / np.sqrt((c * c).mean(-1, keepdims=True) + eps) * gamma)"
                             " @ W_U[:, target]"))], "Part 4", "Freeze the divisor"),
    "layernorm divisor of the uncentred x_final": (
        [('x = x_final - x_final.mean() if kind == "layernorm" else x_final', "x = x_final")],
        "Part 4", "standard deviation of x_final"),
    "a crash inside a function": ([("return (c / s * gamma) @ W_U[:, target]",
                                    "raise ValueError('oops')")], "Part 4", "ValueError: oops"),
}


@pytest.mark.parametrize("name", list(LENS_MISTAKES))
def test_lens_planted_mistakes_fail_with_a_hint(tmp_path, name):
    replacements, part, hint = LENS_MISTAKES[name]
    results, out = grade(plant(tmp_path, LENS_SOLUTION, replacements))
    assert results[part] == "FAIL", f"{name}: {part} should fail\n{out}"
    line = part_line(out, part)
    assert hint in line, f"{name}: the message should teach ({hint!r}); got {line!r}"
    others = [p for p, s in results.items() if p != part and s != "PASS"]
    # lens_row calls final_norm, so a Part 1 mistake may fail Part 2 as well
    assert not others or part == "Part 1", (
        f"{name}: only {part} should fail, but also {others}\n{out}")


def test_a_crash_quotes_the_students_line_and_none_of_the_graders(tmp_path):
    path = plant(tmp_path, LENS_SOLUTION, [("return (c / s * gamma) @ W_U[:, target]",
                                            "raise ValueError('oops')")])
    lineno = path.read_text().splitlines().index("    raise ValueError('oops')") + 1
    _, out = grade(path)
    line = part_line(out, "Part 4")
    assert f"(your line {lineno}: raise ValueError('oops'))" in line, line
    assert len(re.findall(r"line \d+", out)) == 1, f"only the student's line is quoted:\n{out}"
    assert not any(f in out for f in GRADER_FILES), out


@pytest.mark.parametrize("source", ["def final_norm(:\n", "import no_such_module_xyz\n",
                                    "raise SystemExit(3)\n"])
def test_broken_files_are_failed_parts_not_crashes(tmp_path, source):
    path = tmp_path / "student.py"
    path.write_text(source + LENS_TEMPLATE.read_text())
    results, out = grade(path)
    assert set(results.values()) == {"FAIL"} and "does not import" in out
    assert not any(f in out for f in GRADER_FILES), out


def test_missing_file_is_a_usage_error(tmp_path, capsys):
    assert check.main([str(tmp_path / "nothing.py")]) == 2
    assert "is not a file" in capsys.readouterr().err


@pytest.mark.parametrize("name, text", [("README.md", None),
                                        ("notes.py", "def main():\n    print('hello')\n")])
def test_a_file_that_is_not_an_assignment_is_said_once(tmp_path, name, text):
    path = ROOT / name if text is None else tmp_path / name
    if text is not None:
        path.write_text(text)
    p = run_check(path)
    assert p.returncode == 2, p.stdout + p.stderr
    assert "Traceback" not in p.stdout + p.stderr and "AttributeError" not in p.stdout + p.stderr
    assert p.stderr.count("is not an assignment") == 1, p.stderr
    assert "assignment_logit_lens.py" in p.stderr and "assignment_patching.py" in p.stderr, (
        "the message should name the assignments to start from")
    j = run_check("--json", path)
    assert j.returncode == 2 and json.loads(j.stdout)["score"] == 0
    assert "is not an assignment" in json.loads(j.stdout)["output"]


# ------------------------------------------------------------------------------------------
# --json: Gradescope's results.json
# ------------------------------------------------------------------------------------------

def check_gradescope_layout(results: dict, n_parts: int):
    """The fields of https://gradescope-autograders.readthedocs.io/en/latest/specs/ we write."""
    assert set(results) == {"score", "output", "tests"}
    assert len(results["tests"]) == n_parts
    for t in results["tests"]:
        assert set(t) == {"name", "score", "max_score", "status", "output"}, t
        assert t["status"] in ("passed", "failed") and t["max_score"] == 1.0
        assert t["score"] == (1.0 if t["status"] == "passed" else 0.0)
    assert results["score"] == sum(t["score"] for t in results["tests"])


def test_json_of_the_solution_is_gradescope_results_with_full_marks():
    p = run_check("--json", LENS_SOLUTION)
    assert p.returncode == 0, p.stderr
    results = json.loads(p.stdout)
    check_gradescope_layout(results, len(lens_grader.PARTS))
    assert results["score"] == len(lens_grader.PARTS)
    assert [t["name"] for t in results["tests"]] == [f"{label}: {name}" for label, name, _
                                                     in lens_grader.PARTS]


def test_json_of_a_mistake_carries_the_hint(tmp_path, capsys):
    replacements, part, hint = LENS_MISTAKES["KL reversed"]
    path = plant(tmp_path, LENS_SOLUTION, replacements)
    assert check.main(["--json", str(path)]) == 1
    results = json.loads(capsys.readouterr().out)
    check_gradescope_layout(results, len(lens_grader.PARTS))
    failed = [t for t in results["tests"] if t["status"] == "failed"]
    assert [t["name"].split(":")[0] for t in failed] == [part]
    assert hint in failed[0]["output"] and results["score"] == len(lens_grader.PARTS) - 1


# ------------------------------------------------------------------------------------------
# The second assignment: activation patching, direct and total effect
# ------------------------------------------------------------------------------------------

def test_patching_template_is_all_todo_offline(tmp_path):
    home = tmp_path / "empty-minilens-home"       # no fetched SmolLM2: the shipped Llama
    home.mkdir()
    p = run_check(PATCH_TEMPLATE, env={"MINILENS_HOME": str(home)})
    assert p.returncode == 1, p.stdout + p.stderr
    assert "Traceback" not in p.stdout + p.stderr
    assert "patching assignment" in p.stdout and "shakespeare-llama" in p.stdout, p.stdout
    lines = [line for line in p.stdout.splitlines() if line.strip().startswith("[")]
    assert len(lines) == len(patching_grader.PARTS), p.stdout
    assert all("[TODO]" in line for line in lines), p.stdout


def test_patching_solution_passes_on_the_shipped_llama():
    results, out = grade(PATCH_SOLUTION, models=SHIPPED)
    assert set(results.values()) == {"PASS"}, out


def test_patching_solution_runs_as_a_script_offline(tmp_path):
    """Its last cell (the student's "try it") prints the grid and the effects on the grader's
    model; offline, on the shipped Llama."""
    home = tmp_path / "empty-minilens-home"
    home.mkdir()
    p = subprocess.run([sys.executable, str(PATCH_SOLUTION)], capture_output=True, text=True,
                       cwd=tmp_path, env=dict(os.environ, MINILENS_HOME=str(home)), timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith("shakespeare-llama: "), p.stdout
    assert sum(line.startswith("L") for line in lines) == 4, "one grid row per layer shown"
    last = load("shakespeare-llama").cfg.n_layers - 1
    for key in ("attn_out", "mlp_out"):
        assert f"{key} of layer {last}: direct" in p.stdout, p.stdout


def test_patching_solution_passes_on_smollm2():
    smollm2_path()                                 # skip (fail in CI) when it is not fetched
    p = run_check(PATCH_SOLUTION)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "smollm2" in p.stdout and p.stdout.count("[PASS]") == len(patching_grader.PARTS)


GRID_RUN = '''            patched = model.run(corrupted_ids, names=(), interventions={
                ("resid_pre", l): patch_position(clean["resid_pre", l], p)})'''
PATCH_MISTAKES = {
    "metric at position 0": ([("return float(logits[-1, target_id] - logits[-1, contrast_id])",
                               "return float(logits[0, target_id] - logits[0, contrast_id])")],
                             "Part 1", "last position"),
    "metric reversed": ([("return float(logits[-1, target_id] - logits[-1, contrast_id])",
                          "return float(logits[-1, contrast_id] - logits[-1, target_id])")],
                        "Part 1", "logit[target] - logit[contrast]"),
    "every row patched": ([("        value[position] = clean_value[position]\n",
                            "        value[:] = clean_value\n")], "Part 2", "one position only"),
    "the row alone": ([("        value[position] = clean_value[position]\n        return value\n",
                        "        return clean_value[position]\n")], "Part 2", "not the row alone"),
    "writes into clean_value": ([(("        value = value.copy()\n"
                                  "        value[position] = clean_value[position]\n"
                                  "        return value\n"),
                                  ("        row = clean_value[position].copy()\n"
                                  "        clean_value[:] = value\n"
                                  "        clean_value[position] = row\n"
                                  "        return clean_value\n"))],
                                "Part 2", "wrote into clean_value"),
    "noising": ([('clean = model.run(clean_ids, names={"resid_pre"})',
                  "clean = model.run(clean_ids, names=())"),
                 ("corrupted = model.run(corrupted_ids, names=())",
                  'corrupted = model.run(corrupted_ids, names={"resid_pre"})'),
                 (GRID_RUN, GRID_RUN.replace("corrupted_ids", "clean_ids")
                  .replace('clean["resid_pre", l]', 'corrupted["resid_pre", l]'))],
                "Part 3", "This is noising"),
    "not normalised": ([("grid[i, p] = (m - m_corrupted) / (m_clean - m_corrupted)",
                         "grid[i, p] = m")], "Part 3", "Normalise each cell"),
    "normalised upside down": ([("grid[i, p] = (m - m_corrupted) / (m_clean - m_corrupted)",
                                 "grid[i, p] = (m - m_clean) / (m_corrupted - m_clean)")],
                               "Part 3", "upside down"),
    "patched from the corrupted run": ([("corrupted = model.run(corrupted_ids, names=())",
                                         ('corrupted = model.run(corrupted_ids, '
                                         'names={"resid_pre"})')),
                                        ('patch_position(clean["resid_pre", l], p)',
                                         'patch_position(corrupted["resid_pre", l], p)')],
                                       "Part 3", "must come from the clean run"),
    "the whole stream patched": ([('patch_position(clean["resid_pre", l], p)',
                                   'lambda v, l=l: clean["resid_pre", l].copy()')],
                                 "Part 3", "one position at a time"),
    "resid_post instead of resid_pre": ([('clean = model.run(clean_ids, names={"resid_pre"})',
                                          'clean = model.run(clean_ids, names={"resid_post"})'),
                                         (GRID_RUN, GRID_RUN.replace("resid_pre", "resid_post"))],
                                        "Part 3", "one layer late"),
    "grid transposed": ([("    return grid\n", "    return grid.T\n")], "Part 3",
                        "Rows are layers"),
    "a minilens error from the student's call": ([("patched = model.run(corrupted_ids, names=(),",
                                                   ("patched = model.run(corrupted_ids, "
                                                   "names=('no_such_key',),"))],
                                                 "Part 3", "raised in a call from your line"),
    "direct effect without the norm": ([("return float((c / s * model.params.lnf_w) @ u)",
                                         "return float(c @ u)")], "Part 4", "normalised stream"),
    "direct effect with the component's own divisor": (
        [("s = np.sqrt((x_final * x_final).mean() + model.cfg.norm_eps)",
          "s = np.sqrt((trace[key, layer][-1] ** 2).mean() + model.cfg.norm_eps)")],
        "Part 4", "Freeze the divisor"),
    "direct effect without gamma": ([("return float((c / s * model.params.lnf_w) @ u)",
                                      "return float((c / s) @ u)")], "Part 4", "gamma"),
    "direct effect on the target alone": (
        [("u = model.params.W_U[:, target_id] - model.params.W_U[:, contrast_id]",
          "u = model.params.W_U[:, target_id]")], "Part 4", "is a difference"),
    "direct effect at position 0": ([('    x_final = trace["resid_final"][-1]\n',
                                      '    x_final = trace["resid_final"][0]\n'),
                                     ("\n    c = trace[key, layer][-1]\n",
                                      "\n    c = trace[key, layer][0]\n")],
                                    "Part 4", "not position 0"),
    "mean of the last positions": ([("[model.run(ids, names={key})[key, layer] for ids",
                                     "[model.run(ids, names={key})[key, layer][-1:] for ids")],
                                   "Part 5", "every position"),
    "mean of the first reference": ([("return np.concatenate(values).mean(0)",
                                      "return values[0].mean(0)")], "Part 5", "not only the first"),
    "total effect reversed": ([(("    return (logit_diff(clean.logits, target_id, contrast_id)\n"
                                "            - logit_diff(ablated.logits, target_id, "
                                "contrast_id))\n"),
                                ("    return (logit_diff(ablated.logits, target_id, contrast_id)\n"
                                "            - logit_diff(clean.logits, target_id, "
                                "contrast_id))\n"))],
                              "Part 5", "clean - ablated"),
    "zero ablation": ([("value[:] = mean_value", "value[:] = 0")], "Part 5", "Use mean_value"),
    "ablated at the last position only": ([("value[:] = mean_value", "value[-1] = mean_value")],
                                          "Part 5", "at every position"),
}
# The parts that call an earlier part's function, and so may fail with it.
USES = {"Part 1": {"Part 3", "Part 5"}, "Part 2": {"Part 3"}}


@pytest.mark.parametrize("name", list(PATCH_MISTAKES))
def test_patching_planted_mistakes_fail_with_a_hint(tmp_path, name):
    replacements, part, hint = PATCH_MISTAKES[name]
    results, out = grade(plant(tmp_path, PATCH_SOLUTION, replacements), models=SHIPPED)
    assert results[part] == "FAIL", f"{name}: {part} should fail\n{out}"
    line = part_line(out, part)
    assert hint in line, f"{name}: the message should teach ({hint!r}); got {line!r}"
    others = {p for p, s in results.items() if p != part and s != "PASS"}
    assert others <= USES.get(part, set()), (
        f"{name}: only {part} should fail, but also {sorted(others)}\n{out}")
    assert not any(f in out for f in GRADER_FILES), out


@pytest.fixture(scope="module")
def smollm2_cases(tmp_path_factory):
    smollm2_path()                                 # skip (fail in CI) when it is not fetched
    return patching_grader.build_cases(tmp_path_factory.mktemp("cases"), ["smollm2"])


# On the real model: the mistakes of the parts that run the model, each graded on its own part
# with the cases built once. Each of the grid's mistakes costs a whole grid, so noising stands for
# them here; the shipped Llama above gets all of them.
SMOLLM2_MISTAKES = [name for name, (_, part, _) in PATCH_MISTAKES.items()
                    if part in ("Part 1", "Part 4", "Part 5")] + ["noising"]


@pytest.mark.parametrize("name", SMOLLM2_MISTAKES)
def test_patching_mistakes_get_their_hint_on_smollm2(tmp_path, smollm2_cases, name):
    replacements, part, hint = PATCH_MISTAKES[name]
    module = check.import_student(plant(tmp_path, PATCH_SOLUTION, replacements))
    grade_part = next(fn for label, _, fn in patching_grader.PARTS if label == part)
    message = grade_part(module, smollm2_cases)
    assert message is not None and hint in message, f"{name}: got {message!r}"
