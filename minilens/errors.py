"""minilens's own exceptions.

Every error a user can cause is one of these. Each also subclasses the built-in a caller
would already catch (ValueError, FileNotFoundError, ...), so existing ``except`` clauses
keep working. Messages name the thing that was wrong (file, tensor, token, index) and say
how to fix it.
"""


class MinilensError(Exception):
    """Base class of every error minilens raises on purpose."""


class CheckpointNotFoundError(MinilensError, FileNotFoundError):
    """A folder, file or cached model name that does not exist."""


class CheckpointError(MinilensError, ValueError):
    """A checkpoint that exists but is malformed: bad config, bad tensors, bad safetensors file."""


class UnsupportedModelError(MinilensError, ValueError):
    """A model_type or architecture minilens does not implement."""


class InputError(MinilensError, ValueError):
    """Bad input to a minilens function: token ids, targets, layers, positions, options."""


class TokenizerMissingError(MinilensError, RuntimeError):
    """Text was given to a model whose folder has no tokenizer.json."""


class OutOfMemoryError(MinilensError, MemoryError):
    """The weights or activations do not fit in the memory this process may use."""


class NotRecordedError(MinilensError, KeyError):
    """A trace key that is valid but was not recorded (the run was given ``names=...``)."""

    def __str__(self) -> str:  # KeyError's own __str__ would wrap the message in quotes
        return str(self.args[0]) if self.args else ""
