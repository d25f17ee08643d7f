"""medlab.widgets: the interactive notebook layer (anywidget viewer, stage panels).

>>> from medlab.widgets import Viewer, link          # doctest: +SKIP
>>> Viewer(medlab.load("scan/"), layout="three")     # doctest: +SKIP
"""

from .bridges import open_in_napari, view_itk
from .viewer import Viewer, link

__all__ = ["Viewer", "link", "open_in_napari", "view_itk"]
