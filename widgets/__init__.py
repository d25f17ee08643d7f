"""medlab.widgets: the interactive notebook layer (anywidget viewer, stage panels).

>>> from medlab.widgets import Viewer, link          # doctest: +SKIP
>>> Viewer(medlab.load("scan/"), layout="three")     # doctest: +SKIP
>>> PreprocessWidget(image)                          # doctest: +SKIP
>>> Workbench({"fixed": ct, "moving": mr}, group="register")   # doctest: +SKIP
"""

from .bridges import open_in_napari, view_itk
from .cohort import Cohort
from .explain import ExplainWidget
from .outputs import CurvePlot
from .panel import StagePanel, link_window
from .preprocess import PreprocessWidget, preprocess_widget
from .register import RegisterWidget
from .segment import SegmentWidget
from .view3d import View3D
from .viewer import Viewer, link
from .workbench import Workbench

__all__ = [
           "Cohort",
           "CurvePlot",
           "ExplainWidget",
           "PreprocessWidget",
           "RegisterWidget",
           "SegmentWidget",
           "StagePanel",
           "View3D",
           "Viewer",
           "Workbench",
           "link",
           "link_window",
           "open_in_napari",
           "preprocess_widget",
           "view_itk",
]
