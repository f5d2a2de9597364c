"""The `minilens` command: every subcommand, the default model, every error path, and piped output.

Most tests call ``cli.main([...])`` in-process (capsys captures stdout/stderr, which are then not
terminals, exactly like a pipe). The expected numbers are always recomputed here with the library
on the same shipped weights, never copied from an earlier run: the weights may be retrained.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import minilens as ml
from minilens.show import cli

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "weights" / "shakespeare-llama"
TEXT = "To be, or not to be, that is the"
ANSI = re.compile(r"\x1b\[")


@pytest.fixture(scope="module")
def model():
    return ml.load(SHIPPED)


@pytest.fixture(scope="module")
def trace(model):
    return model.run(TEXT)


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------------------------------
# The default model
# ------------------------------------------------------------------------------------------

def test_default_model_is_the_shipped_llama_in_an_editable_install():
    assert Path(ml.__file__).resolve().parent == ROOT / "minilens", (
        "this test is about the checkout's package")
    assert cli.default_model_path() == SHIPPED, \
        "an editable install must find the repository's weights/shakespeare-llama"


def build_requirement(package: str) -> str:
    """The minimum version of ``package`` that pyproject.toml's [build-system] requires."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    build_system = text.split("[build-system]", 1)[1].split("\n[", 1)[0]
    return re.search(rf'"{package}>=([0-9.]+)"', build_system).group(1)


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def test_wheel_ships_the_default_weights_and_resolves_them(tmp_path):
    """Build a wheel from a copy of the sources, check its file list, unzip it, and resolve the
    default there.

    pip builds it without build isolation (no index needed), so with this environment's
    setuptools, which must be at least the version pyproject.toml's build-system requires: older
    ones have no built-in bdist_wheel (setuptools 65.5, which Python 3.11's venv installs, fails
    with "invalid command 'bdist_wheel'"). The test extra installs a recent enough one."""
    setuptools = pytest.importorskip("setuptools")
    need = build_requirement("setuptools")
    if version_tuple(setuptools.__version__) < version_tuple(need):
        pytest.skip(f"building the wheel needs setuptools>={need} (pyproject.toml's build-system "
                    f"requires), this environment has {setuptools.__version__}: "
                    f"pip install 'setuptools>={need}' (the test extra, pip install -e '.[test]', "
                    f"installs it)")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "minilens", src / "minilens",
                    ignore=shutil.ignore_patterns("__pycache__", "_weights"))
    for name in ("shakespeare-llama", "shakespeare-gpt2"):
        shutil.copytree(SHIPPED.parent / name, src / "weights" / name)
    dist = tmp_path / "dist"
    pip = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "-w", str(dist),
                          "--no-deps", "--no-build-isolation", "-q"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert pip.returncode == 0, (f"pip wheel failed (exit {pip.returncode}); its output:\n"
                                 f"{pip.stdout[-4000:]}\n{pip.stderr[-4000:]}")
    (wheel,) = dist.glob("minilens-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in ("config.json", "model.safetensors", "tokenizer.json"):
        for name in ("shakespeare-llama", "shakespeare-gpt2"):
            assert f"minilens/_weights/{name}/{f}" in names, (
                f"the wheel lacks the shipped {name}'s {f}")
    assert "minilens/show/cli.py" in names
    assert not any(n.startswith("weights/") for n in names), (
        "weights belong under minilens/_weights in a wheel")
    unpacked = tmp_path / "unpacked"
    zipfile.ZipFile(wheel).extractall(unpacked)
    env = dict(os.environ, PYTHONPATH=str(unpacked))
    code = ("import minilens, minilens.show.cli as c; p = c.default_model_path(); "
            "print(minilens.__file__); print(p); "
            "m = minilens.load(p); print(m.cfg.n_layers); "
            "print(minilens.load('shakespeare-gpt2').cfg.family)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                         text=True, check=True).stdout.splitlines()
    assert out[0].startswith(str(unpacked)), (
        f"imported minilens from {out[0]}, not from the unpacked wheel")
    assert out[1] == str(unpacked / "minilens" / "_weights" / "shakespeare-llama")
    assert int(out[2]) == ml.load(SHIPPED).cfg.n_layers
    assert out[3] == "gpt2", (
        "ml.load('shakespeare-gpt2') should find the wheel's GPT-2 from any directory")


# ------------------------------------------------------------------------------------------
# lens
# ------------------------------------------------------------------------------------------

def test_lens_table_is_the_logit_lens_and_plain_when_piped(capsys, model, trace):
    code, out, err = run(capsys, "lens", TEXT)
    assert code == 0 and err == ""
    assert not ANSI.search(out), "piped output (not a terminal) must carry no ANSI colour codes"
    lines = out.splitlines()
    lens = ml.logit_lens(trace)
    labels = [str(x) for x in lens.labels]
    rows = [line for line in lines if line.split(" ")[0] in labels]
    assert [r.split(" ")[0] for r in rows] == labels, "one table row per lens row, in stream order"
    # The last cell of each row: the top-1 token at the last position and its probability.
    for r, line in enumerate(rows):
        p = float(lens.top_probs[r, -1, 0])
        assert line.rstrip().endswith(f" {cli_prob(p)}"), (
            f"row {labels[r]}: last cell should show p={p:.3g}")
    final_top = model.to_str_tokens([int(trace.logits[-1].argmax())])[0]
    assert (rows[-1].split()[-2] == final_top.strip().replace("\n", "\\n")
            or final_top.strip() == ""), (
        "the final_post row's last cell is the model's own next-token prediction")


def cli_prob(p):
    from minilens.show.render import fmt_prob
    return fmt_prob(p)


def test_lens_colour_only_when_asked_or_on_a_terminal(capsys, monkeypatch):
    code, out, _ = run(capsys, "lens", TEXT, "--color", "always")
    assert code == 0 and "\x1b[48;2;" in out, (
        "--color always shades cells with 24-bit ANSI backgrounds")
    monkeypatch.setattr(cli, "_isatty", lambda stream: True)          # pretend stdout is a terminal
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    assert cli.use_color("auto", sys.stdout)
    monkeypatch.setenv("NO_COLOR", "1")
    assert not cli.use_color("auto", sys.stdout), "NO_COLOR (https://no-color.org) turns colour off"
    monkeypatch.delenv("NO_COLOR")
    monkeypatch.setattr(cli, "_isatty", lambda stream: False)
    assert not cli.use_color("auto", sys.stdout), "piped output is plain"


def test_lens_options_target_topk_mid_json_html(capsys, tmp_path, model, trace):
    j, h = tmp_path / "lens.json", tmp_path / "lens.html"
    code, out, err = run(capsys, "lens", TEXT, "--target", " the", "--top-k", "3", "--mid",
                         "--json", str(j), "--html", str(h))
    assert code == 0 and err.splitlines() == [f"wrote {h} (the HTML report)",
                                              f"wrote {j} (the numbers as JSON)"], err
    lens = ml.logit_lens(trace, target=" the", top_k=3, incl_mid=True)
    data = json.loads(j.read_text())
    assert data["labels"] == lens.labels.tolist() and "0_mid" in data["labels"], (
        "--mid adds the {l}_mid rows")
    np.testing.assert_array_equal(data["top_ids"], lens.top_ids)
    np.testing.assert_allclose(data["target_prob"], lens.target_prob, rtol=1e-6)
    assert data["tokens"] == model.to_str_tokens(trace.ids)
    assert "probability of ' the'" in out and "top-3 at the last position" in out
    # The target table's last cell: the target's probability and rank at the final row.
    target_rows = out.split("probability of ' the'")[1].split("top-3")[0]
    final = [line for line in target_rows.splitlines() if line.startswith("final_post")][0]
    assert final.split()[-1] == f"r{int(lens.target_rank[-1, -1])}"
    assert ("<svg" in h.read_text()
            and h.read_text().count('class="ml-cell"') == lens.top_ids[:, :, 0].size)


def test_lens_last_n_and_wide_inputs(capsys):
    code, out, _ = run(capsys, "lens", TEXT, "--last", "3")
    assert code == 0
    header = out.splitlines()[0].split()
    assert header == ["is", "the"][-2:] or len(header) == 3, "--last 3 shows three columns"
    long_text = " ".join(["the king"] * 60)
    code, out, _ = run(capsys, "lens", long_text)
    assert code == 0 and "(showing the last" in out.splitlines()[0], (
        "a wide input is cut, with a note")
    assert max(len(line) for line in out.splitlines()[1:]) <= 200


def test_progress_goes_to_stderr_only_on_a_terminal(capsys, monkeypatch):
    code, out, err = run(capsys, "lens", TEXT)
    assert err == "", "no progress when stderr is not a terminal"
    monkeypatch.setattr(cli, "_isatty", lambda stream: stream is sys.stderr)
    code, out, err = run(capsys, "lens", TEXT)
    assert code == 0 and "loading" in err and "running" in err, "a terminal sees what is happening"
    assert not ANSI.search(out) and "loading" not in out, "progress never mixes into stdout"


# ------------------------------------------------------------------------------------------
# attribute
# ------------------------------------------------------------------------------------------

def parse_check(out):
    total = float(re.search(r"sum of all parts\s+= ([-+0-9.e]+)", out).group(1))
    logit = float(re.search(r"model's logit(?: difference)?\s+= ([-+0-9.e]+)", out).group(1))
    diff = float(re.search(r"difference\s+= ([-+0-9.e]+)", out).group(1))
    return total, logit, diff


@pytest.mark.parametrize("by,layer", [("layer", None), ("head", None), ("head", "2"),
                                      ("token", "1"), ("neuron", "-1")])
def test_attribute_every_split_sums_to_the_logit(capsys, by, layer, model, trace):
    argv = (["attribute", TEXT, "--target", " the", "--by", by]
            + ([] if layer is None else ["--layer", layer]))
    code, out, err = run(capsys, *argv)
    assert code == 0 and err == "" and not ANSI.search(out)
    total, logit, diff = parse_check(out)
    t = model.to_single_token(" the")
    assert logit == pytest.approx(float(trace.logits[-1, t]), abs=1e-6), (
        "the printed logit is the model's own")
    assert total == pytest.approx(logit, abs=1e-4) and abs(diff) < 1e-4, (
        "the parts must sum to the logit")
    attr = ml.layer_attribution(trace, " the", by=by, layer=None if layer is None else int(layer))
    label, value = attr.top(1)[0]
    first = out.splitlines()[1].split()
    assert first[0] == label and float(first[1]) == pytest.approx(value, abs=1e-4), (
        "sorted by |value|, largest first")


def test_attribute_contrast_json_html(capsys, tmp_path, model, trace):
    j, h = tmp_path / "a.json", tmp_path / "a.html"
    code, out, _ = run(capsys, "attribute", TEXT, "--target", " the", "--contrast", " a",
                       "--json", str(j), "--html", str(h))
    assert code == 0
    d = json.loads(j.read_text())
    t, c = model.to_single_token(" the"), model.to_single_token(" a")
    assert d["logit"] == pytest.approx(float(trace.logits[-1, t] - trace.logits[-1, c]), abs=1e-5)
    assert sum(d["values"]) == pytest.approx(d["logit"], abs=1e-4) and d["contrast"] == c
    assert "logit difference" in out
    assert h.read_text().count('class="ml-bar"') == len(d["values"])


# ------------------------------------------------------------------------------------------
# generate, info
# ------------------------------------------------------------------------------------------

def test_generate_is_greedy(capsys, model):
    code, out, _ = run(capsys, "generate", "To be", "-n", "6")
    assert code == 0
    ids = model.to_tokens("To be")
    # the text the six tokens add after the prompt's own
    expected = "To be" + model.decode(model.generate(ids, 6))[len(model.decode(ids)):]
    assert out == expected + "\n"


def test_info(capsys, model):
    code, out, _ = run(capsys, "info")
    assert code == 0
    fields = dict(line.split(None, 1) for line in out.splitlines())
    assert fields["family"].startswith(model.cfg.family)
    assert (fields["layers"] == str(model.cfg.n_layers)
            and fields["d_model"] == str(model.cfg.d_model))
    assert fields["parameters"] == f"{model.cfg.n_params:,}"
    assert "BF16" in fields["dtype"] or "F32" in fields["dtype"] or "F16" in fields["dtype"]
    assert "model.safetensors" in fields["files"]


# ------------------------------------------------------------------------------------------
# Errors: one line on stderr, exit status 2, never a traceback
# ------------------------------------------------------------------------------------------

ERRORS = {
    "unknown model": (["lens", TEXT, "--model", "no/such-model-anywhere"],
                      "no/such-model-anywhere"),
    "a folder that is not a model": (["info", "--model", str(ROOT / "tests")], "config.json"),
    "target of two tokens": (["attribute", TEXT, "--target", " questionable"], "not one"),
    "lens target of two tokens": (["lens", TEXT, "--target", " questionable"], "not one"),
    "layer out of range": (["attribute", TEXT, "--target", " the", "--by", "neuron",
                            "--layer", "99"], "out of range"),
    "neuron without a layer": (["attribute", TEXT, "--target", " the", "--by", "neuron"], "layer"),
    "layer with by=layer": (["attribute", TEXT, "--target", " the", "--layer", "1"], "layer"),
    "position out of range": (["attribute", TEXT, "--target", " the", "--position", "500"],
                              "out of range"),
    "contrast equals target": (["attribute", TEXT, "--target", " the", "--contrast", " the"],
                               "contrast"),
    "unknown --by": (["attribute", TEXT, "--target", " the", "--by", "planet"], "invalid choice"),
    "missing --target": (["attribute", TEXT], "--target"),
    "missing text": (["lens"], "text"),
    "no subcommand": ([], "required"),
    "a layer that is not a number": (["attribute", TEXT, "--target", " the", "--by", "token",
                                      "--layer", "x"], "int"),
    "top-k of zero": (["lens", TEXT, "--top-k", "0"], "--top-k"),
    "last of zero": (["lens", TEXT, "--last", "0"], "--last"),
    "negative -n": (["generate", TEXT, "-n", "-1"], "-n"),
    "a file given as the model": (["info", "--model", str(SHIPPED / "config.json")], "is a file"),
    "an unwritable --html": (["lens", TEXT, "--html", "/nonexistent-dir/x.html"], "cannot write"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_errors_are_one_line_and_exit_2(capsys, case):
    argv, fragment = ERRORS[case]
    code, out, err = run(capsys, *argv)
    assert code == 2, f"{case}: exit status {code}, expected 2"
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("minilens: error: "), (
        f"{case}: stderr was {err!r}")
    assert fragment in lines[0], f"{case}: the message should mention {fragment!r}: {lines[0]}"
    assert "Traceback" not in err


# ------------------------------------------------------------------------------------------
# The real console script, once, through a pipe
# ------------------------------------------------------------------------------------------

def console_script():
    exe = shutil.which("minilens")
    return [exe] if exe else [sys.executable, "-m", "minilens"]


def test_console_script_through_a_pipe(model):
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    p = subprocess.run(console_script() + ["lens", TEXT], capture_output=True, text=True, env=env,
                       cwd="/")
    assert p.returncode == 0, p.stderr
    assert not ANSI.search(p.stdout) and p.stderr == "", "a pipe gets plain text and no progress"
    assert p.stdout.splitlines()[-1].startswith("final_post")
    p = subprocess.run(console_script() + ["attribute", TEXT, "--target", " questionable"],
                       capture_output=True, text=True, cwd="/")
    assert (p.returncode == 2 and p.stderr.startswith("minilens: error:")
            and "Traceback" not in p.stderr)


def test_python_dash_m_minilens():
    p = subprocess.run([sys.executable, "-m", "minilens", "info"], capture_output=True, text=True,
                       cwd="/")
    assert p.returncode == 0 and "parameters" in p.stdout


def test_lens_html_scale_and_orientation_flags(capsys, tmp_path, trace):
    """--scale and --input-at-bottom reach the heatmap: the report equals render.report's with the
    same options, and differs from the default one."""
    from minilens.show import render

    lens = ml.logit_lens(trace, top_k=5)
    pages = {}
    for name, flags, options in [("default", [], {}),
                                 ("linear", ["--scale", "linear"], {"scale": "linear"}),
                                 ("bottom", ["--input-at-bottom"], {"input_at_bottom": True})]:
        h = tmp_path / f"{name}.html"
        code, _, err = run(capsys, "lens", TEXT, "--metric", "kl", "--html", str(h), *flags)
        assert code == 0, err
        pages[name] = h.read_text()
        want = render.report(lens=lens, metric="kl", lens_options=options)
        assert render.heatmap_svg(lens, "kl", **options) in want
        body = want.split("<h2>Logit lens</h2>")[1]
        assert body in pages[name], f"{flags}: the heatmap is not the one these options draw"
    assert pages["linear"] != pages["default"] and pages["bottom"] != pages["default"]
