"""Small compatibility shims for the supported transformers range (>=4.45,<4.58)."""

from __future__ import annotations

DTYPE_KWARG_SINCE = (4, 56)  # transformers renamed `torch_dtype` to `dtype` here


def dtype_kwarg() -> str:
    """The `from_pretrained` keyword for the weights' dtype in the installed transformers."""
    import transformers

    major, minor = (int(part) for part in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= DTYPE_KWARG_SINCE else "torch_dtype"
