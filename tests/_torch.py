"""Import torch and transformers for the reference tests.

On a laptop without them the reference tests skip. In CI (.ci/run sets MINILENS_REQUIRE_TORCH=1)
a missing torch is a failure, never a silent skip.
"""

import os

import pytest

REQUIRE_TORCH = bool(os.environ.get("MINILENS_REQUIRE_TORCH"))


def import_torch():
    """-> (torch, transformers), or skip the calling module when they are absent outside CI."""
    if REQUIRE_TORCH:
        import torch  # an ImportError here fails the run, as it must in CI
        import transformers
        return torch, transformers
    return pytest.importorskip("torch"), pytest.importorskip("transformers")
