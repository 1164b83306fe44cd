"""The in-process backend. Importing this package imports no torch or transformers."""

from ._backend import LocalBackend
from ._images import ImageLoader, ImagePolicy

__all__ = ["LocalBackend", "ImagePolicy", "ImageLoader"]
