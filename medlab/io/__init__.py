"""Reading and writing clinical image formats: :func:`load`, :func:`save`."""

from .atomic import atomic_path, atomic_write, atomic_write_bytes, atomic_write_text

__all__ = ["atomic_path", "atomic_write", "atomic_write_bytes", "atomic_write_text"]
