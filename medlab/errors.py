"""Exceptions raised by medlab.

Every error a user can cause (a bad file, a bad parameter, mismatched geometry) is a
:class:`MedlabError`, and its message names the file or parameter and says what to do.
"""

from __future__ import annotations


class MedlabError(Exception):
    """Base class of every error medlab raises on purpose."""


class ReadError(MedlabError, OSError):
    """A file or folder could not be read as a medical image."""


class WriteError(MedlabError, OSError):
    """An image could not be written (exists already, unsupported format, disk error)."""


class ParameterError(MedlabError, ValueError):
    """An argument is out of range, of the wrong type, or inconsistent with another."""


class ImageError(MedlabError, ValueError):
    """An image's content cannot be processed (NaNs, too small, wrong dimension or kind)."""


class GeometryError(MedlabError, ValueError):
    """Two images, or an image and a point, do not share or overlap in physical space."""


class Cancelled(MedlabError):
    """A long computation was cancelled by the user."""


class MedlabWarning(UserWarning):
    """Something was read or written by a stated rule that the user should know about
    (a header field that readers interpret differently, information a format cannot hold)."""


def warn(message: str, category: type[Warning] = MedlabWarning) -> None:
    """Issue a warning attributed to the user's line (the first caller outside medlab),
    however deep inside medlab it is raised; Python 3.12's ``skip_file_prefixes`` in 3.11."""
    import os
    import sys
    import warnings

    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    frame, level = sys._getframe(1), 2
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
