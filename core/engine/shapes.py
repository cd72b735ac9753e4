"""Tensor shapes at public boundaries: jaxtyping annotations (Float[Tensor, "batch hidden"], ...), the field's
convention (TransformerLens, llm-transparency-tool), checked at run time where it costs nothing in use.

``checked`` wraps a function or dataclass in jaxtyping's shape check with beartype when
PROTOTOKENS_CHECK_SHAPES=1, which the test suite sets (tests/conftest.py) for every test and every server it
starts; otherwise it returns the object unchanged, so the dashboard and the CLI pay nothing and need no beartype.
Within one call every dimension name means one size: e and m of ``build_inputs`` must share "batch" and "hidden".
"""

from __future__ import annotations

import os
from typing import TypeVar

T = TypeVar("T")

ENV = "PROTOTOKENS_CHECK_SHAPES"


def checking() -> bool:
    return os.environ.get(ENV) == "1"


def checked(obj: T) -> T:
    """obj with its annotations (shapes, dtypes and the rest) checked at every call when checking() holds."""
    if not checking():
        return obj
    from beartype import beartype
    from jaxtyping import jaxtyped

    return jaxtyped(typechecker=beartype)(obj)
