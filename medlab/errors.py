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
