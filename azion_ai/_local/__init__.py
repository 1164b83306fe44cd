"""The in-process backend. Importing this package imports no torch or transformers."""

from ._backend import LocalTransport
from ._images import ImageLoader, ImagePolicy

__all__ = ["LocalTransport", "ImagePolicy", "ImageLoader"]
