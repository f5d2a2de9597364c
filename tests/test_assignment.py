"""The course assignment and its checker (``python -m minilens.course.check``).

The untouched template must grade as all-TODO without a crash; the solution must pass every part;
and the usual mistakes, planted into copies of the solution, must fail with the hint that names
them (that is what makes the checker teach). Broken files (syntax errors, exceptions at import or
inside a function) become failed parts, never a traceback from the checker.
"""

import io
import subprocess
import sys
from pathlib import Path

import pytest

from minilens.course import check

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "tutorials" / "assignment_logit_lens.py"
SOLUTION = ROOT / "tutorials" / "solutions" / "assignment_logit_lens.py"


def grade(path):
    out = io.StringIO()
    results = check.grade(path, out=out)
    return results, out.getvalue()


def test_template_is_all_todo_and_the_checker_does_not_crash():
    p = subprocess.run([sys.executable, "-m", "minilens.course.check", str(TEMPLATE)],
                       capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 1, "an unfinished assignment must not exit 0"
    assert "Traceback" not in p.stdout + p.stderr
    lines = [line for line in p.stdout.splitlines() if line.strip().startswith("[")]
    assert len(lines) == len(check.PARTS) and all("[TODO]" in line for line in lines), p.stdout
    assert "0 of 4 parts pass" in p.stdout


def test_solution_passes_every_part():
    p = subprocess.run([sys.executable, "-m", "minilens.course.check", str(SOLUTION)],
                       capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.count("[PASS]") == len(check.PARTS)


def test_template_functions_raise_not_implemented():
    ns = {}
    exec(compile(TEMPLATE.read_text(), str(TEMPLATE), "exec"), ns)
    for name in ("final_norm", "lens_row", "entropy", "kl_to_final", "layer_attribution"):
        with pytest.raises(NotImplementedError):
            ns[name](*([None] * ns[name].__code__.co_argcount))


MISTAKES = {
    # (text in the solution, the mistake, the part that must fail, a fragment of the hint it must
    # print)
    "eps outside the sqrt": ("s = np.sqrt((x * x).mean(-1, keepdims=True) + eps)      # RMSNorm",
                             "s = np.sqrt((x * x).mean(-1, keepdims=True)) + eps      # RMSNorm",
                             "Part 1", "eps inside the sqrt"),
    "no gamma": ("y = x / s * gamma\n", "y = x / s\n", "Part 1", "gamma"),
    "layernorm not centred": (("        x = x - x.mean(-1, keepdims=True)"
                               "                       # LayerNorm centres first"),
                              "        pass", "Part 1", "centre"),
    "lens without the norm": ("logits = final_norm(resid, gamma, beta, eps, kind) @ W_U",
                              "logits = resid @ W_U", "Part 2", "through the final norm"),
    "entropy in bits": ("return -(np.exp(log_p) * log_p).sum(-1)",
                        "return -(np.exp(log_p) * log_p).sum(-1) / np.log(2)",
                        "Part 3", "natural log"),
    "KL reversed": ("return (np.exp(log_p_final) * (log_p_final - log_p)).sum(-1)",
                    "return (np.exp(log_p) * (log_p - log_p_final)).sum(-1)",
                    "Part 3", "wrong way round"),
    "divisor not frozen": ("return (c / s * gamma) @ W_U[:, target]",
                           ("return (c / np.sqrt((c * c).mean(-1, keepdims=True) + eps) * gamma)"
                            " @ W_U[:, target]"),
                           "Part 4", "Freeze the divisor"),
    "a crash inside a function": ("return (c / s * gamma) @ W_U[:, target]",
                                  "raise ValueError('oops')", "Part 4", "ValueError: oops"),
}


@pytest.mark.parametrize("name", list(MISTAKES))
def test_planted_mistakes_fail_with_a_hint(tmp_path, name):
    old, new, part, hint = MISTAKES[name]
    source = SOLUTION.read_text()
    assert old in source, f"the solution changed; update the planted mistake {name!r}"
    path = tmp_path / "student.py"
    path.write_text(source.replace(old, new))
    results, out = grade(path)
    assert results[part] == "FAIL", f"{name}: {part} should fail\n{out}"
    line = next(line for line in out.splitlines() if f"] {part} " in line)
    assert hint in line, f"{name}: the message should teach ({hint!r}); got {line!r}"
    others = [p for p, s in results.items() if p != part and s != "PASS"]
    assert not others or part == "Part 1", (
        f"{name}: only {part} should fail, but also {others}\n{out}")


@pytest.mark.parametrize("source", ["def final_norm(:\n", "import no_such_module_xyz\n",
                                    "raise SystemExit(3)\n"])
def test_broken_files_are_failed_parts_not_crashes(tmp_path, source):
    path = tmp_path / "student.py"
    path.write_text(source)
    results, out = grade(path)
    assert set(results.values()) == {"FAIL"} and "does not import" in out


def test_missing_file_is_a_usage_error(tmp_path, capsys):
    assert check.main([str(tmp_path / "nothing.py")]) == 2
    assert "is not a file" in capsys.readouterr().err
