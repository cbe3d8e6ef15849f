"""Unpickling files we did not write (a released checkpoint, a benchmark file) without running code
from them: ``pickle.load`` calls whatever global a file names, so ``load`` resolves only the
globals a caller allows and refuses any other before it is called.
"""

from __future__ import annotations

import pickle
from collections.abc import Collection
from typing import IO, Any

# NumPy's array, dtype and scalar reconstruction, under numpy 1's module names (numpy.core.*) and
# numpy 2's (numpy._core.*): what a pickle of NumPy arrays names.
NUMPY_ARRAYS = frozenset(
    {(f"{core}.multiarray", name) for core in ("numpy.core", "numpy._core") for name in ("_reconstruct", "scalar")}
    | {(f"{core}.numeric", "_frombuffer") for core in ("numpy.core", "numpy._core")}
    | {("numpy", "ndarray"), ("numpy", "dtype")}
)


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a global outside the allowed ones; the message is its ``module.name``."""


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: IO[bytes], allowed: Collection[tuple[str, str]]):
        super().__init__(file)
        self._allowed = allowed

    def find_class(self, module: str, name: str) -> Any:
        # Pickle's extension registry and its INST/OBJ opcodes resolve through here too, so nothing
        # outside ``allowed`` can be reached.
        if (module, name) not in self._allowed:
            raise RefusedGlobal(f"{module}.{name}")
        if module.startswith("numpy.core."):  # numpy 2 reads numpy 1's names with a DeprecationWarning
            module = "numpy._core." + module.removeprefix("numpy.core.")
        return super().find_class(module, name)


def load(file: IO[bytes], allowed: Collection[tuple[str, str]] = NUMPY_ARRAYS) -> Any:
    """The object pickled in ``file``, whose globals must all be ``(module, name)`` pairs of ``allowed``.

    Raises RefusedGlobal (naming the first other global, before anything is called) and whatever a
    damaged stream raises (EOFError, pickle.UnpicklingError, ValueError, ...); callers name the file.
    """
    return _Unpickler(file, allowed).load()
