"""The 3D view: a volume rendering and label surfaces in physical space, linked to the 2D viewer.

Why niivue (through ipyniivue)
------------------------------
Checked on this machine (November 2026) against the alternatives, for a notebook that must
work offline and put a volume and meshes in one scene in millimetres:

=====================  ==========  ===========================================================
viewer                 wheel       verdict
=====================  ==========  ===========================================================
ipyniivue 2.4          1.7 MB      anywidget (like medlab's viewer: no lab extension); niivue's
                                   JavaScript is inside the wheel (no request left 127.0.0.1 in
                                   the browser test); reads NIfTI with its full affine
                                   (oblique, anisotropic) itself, and draws volume rendering,
                                   slices, crosshair and meshes in one world frame in mm, with
                                   an orientation cube; WebGL2 works under headless Chromium's
                                   software renderer.
k3d 3.2                8.5 MB      ships its JS and can place a volume by a 4x4 model matrix,
                                   but reads no medical format (every placement is ours to
                                   write), has no patient-frame crosshair or orientation
                                   markers, and its JS names CDN URLs (unpkg, cdnjs; not
                                   tested offline here).
plotly 7.1 (mesh3d)    9.7 MB      meshes fine, but ``go.Volume`` draws stacked isosurfaces,
                                   not a ray-cast volume rendering; 40 MB installed.
pyvista + trame/vtk    140 MB      the ``vtk`` wheel alone; the Jupyter backend runs a trame
                                   server beside the kernel (ipyvtklink: last release 2022).
itkwidgets 1.0         –           loads its viewer from IPFS/CDN at display time: not offline
                                   (see stack-facts).
=====================  ==========  ===========================================================

Frames
------
medlab works in LPS; niivue's world is RAS (NIfTI). The volume travels as NIfTI bytes written
by :func:`medlab.save` (which stores the RAS affine), so niivue places every voxel itself;
meshes (:mod:`medlab.mesh`, vertices in mm LPS) travel as PLY with x and y negated (a rotation
by 180° about z, so the winding stays outward). :attr:`View3D.position` is in mm LPS, like
``medlab.widgets.Viewer.position``.

Display only: no voxels come back
---------------------------------
ipyniivue 2.4 sends every loaded volume's voxels (and every mesh's vertices and faces) back
to the kernel in 5 MB chunks after loading, doubling the memory and the traffic of a view
that only displays. The module loaded by :class:`View3D` is ipyniivue's own ``widget.js``
with two small edits (:func:`niivue_module`): the chunk sender returns at once, and the
niivue instance is exposed on its canvas (``canvas.medlab-view3d-canvas``,
``canvas.medlabNiivue``) so tests and the browser console can read the scene. If a future
ipyniivue changes the code the edits look for, the original module is used unchanged (with a
warning) and the chunks are dropped on arrival instead.

Examples
--------
>>> import medlab
>>> from medlab.widgets import Viewer, View3D
>>> brain = medlab.data.brain_mri(size=(64, 64, 32))
>>> viewer = Viewer(brain.t1, labels=brain.labels)                    # doctest: +SKIP
>>> view = View3D(brain.t1, brain.labels, values=[8])                 # doctest: +SKIP
>>> unlink = view.link(viewer)       # the 3D crosshair follows the 2D one   # doctest: +SKIP
"""

from __future__ import annotations

import functools
import html
import re
import tempfile
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import ipywidgets as W
import numpy as np
import traitlets

from medlab.errors import GeometryError, ImageError, ParameterError
from medlab.image import Image, as_image
from medlab.mesh import Mesh, label_surfaces

__all__ = ["View3D", "niivue_module"]

MODES = {"render": 4, "multiplanar": 3}     # niivue SliceType values
_LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])


# ----------------------------------------------------------------------------- the JS module
@functools.lru_cache(maxsize=1)
def niivue_module() -> tuple[str, bool]:
    """ipyniivue's ``widget.js`` with the chunk sender disabled and the instance exposed.

    Returns ``(source, patched)``; ``patched`` is False (and a warning is issued) when the
    installed ipyniivue's code does not have the expected shape, in which case the source is
    the original.
    """
    import ipyniivue

    path = Path(ipyniivue.__file__).parent / "static" / "widget.js"
    src = path.read_text(encoding="utf-8")
    ident = r"[\w$]+"
    sender = [m for m in re.finditer(
        rf"async function {ident}\({ident},{ident},{ident},{ident},{ident}=5\*1024\*1024,{ident}=0\)\{{", src)
        if "sendChunkedData" in src[m.end(): m.end() + 800]]
    instance = re.search(rf"\{{async initialize\(\{{model:{ident}\}}\)\{{let {ident}=new {ident};if\(!({ident})\)", src)
    export = re.search(rf"export\{{({ident}) as default\}};?\s*$", src)
    if len(sender) != 1 or instance is None or export is None:
        warnings.warn(f"ipyniivue {getattr(ipyniivue, '__version__', '?')}: its widget.js no longer has the shape "
                      "medlab patches; volumes will be sent back to the kernel (and dropped there)",
                      RuntimeWarning, stacklevel=2)
        return src, False
    nv, default = instance.group(1), export.group(1)
    # the export (at the end) first, so the sender's offset stays valid
    src = src[: export.start()] + (
        f"const medlabView3D={{...{default},async render(ctx){{const out=await {default}.render(ctx);"
        f"if({nv}&&{nv}.canvas){{{nv}.canvas.classList.add('medlab-view3d-canvas');{nv}.canvas.medlabNiivue={nv};}}"
        f"return out;}}}};export{{medlabView3D as default}};\n")
    cut = sender[0].end()
    src = src[:cut] + "return;" + src[cut:]          # display only: never send voxels back
    return src, True


def _drop_chunks(state: dict) -> dict:
    return {k: v for k, v in state.items() if not k.startswith("chunk_")}


@functools.lru_cache(maxsize=1)
def _classes():
    """niivue widget classes that load the patched module and ignore voxels sent back."""
    try:
        import ipyniivue
    except ImportError as exc:
        raise ImportError("the 3D view needs ipyniivue (a medlab dependency): pip install ipyniivue") from exc

    class Volume(ipyniivue.Volume):
        def set_state(self, state):
            super().set_state(_drop_chunks(state))

    class Mesh(ipyniivue.Mesh):
        def set_state(self, state):
            super().set_state(_drop_chunks(state))

    class NiiVue(ipyniivue.NiiVue):
        _esm = traitlets.Unicode(niivue_module()[0]).tag(sync=True)

    return NiiVue, Volume, Mesh


# ----------------------------------------------------------------------------- the widget
class View3D(W.VBox):
    """A 3D view of an image (volume rendering) and label surfaces, in physical space.

    Parameters
    ----------
    image : Image, optional
        The volume to render (3D, any spacing, origin and direction).
    labels : Image, optional
        A label map whose surfaces are shown (it may be on another grid than ``image``,
        as long as the two overlap in space).
    values : sequence of int, optional
        Which labels get a surface (default: every non-zero value present).
    meshes : sequence of Mesh, optional
        Surfaces made beforehand (:mod:`medlab.mesh`), shown as well.
    smoothing, reduction
        Passed to :func:`medlab.mesh.label_surfaces`.
    mode : {'render', 'multiplanar'}
        The 3D rendering alone, or three planes plus the rendering.
    height : int
        Pixels.
    mesh_opacity : float
        Opacity of the surfaces, 0 to 1.
    xray : float
        How strongly surfaces inside the volume show through it, 0 (hidden behind the
        rendered skin) to 1.

    Attributes
    ----------
    position : list of float
        Crosshair in mm, LPS (as ``medlab.widgets.Viewer.position``); see :meth:`link`.
    meshes : list of Mesh
        The surfaces shown, in mm LPS.

    Examples
    --------
    >>> import medlab
    >>> brain = medlab.data.brain_mri(size=(64, 64, 32))
    >>> view = View3D(brain.t1, brain.labels, values=[7, 8, 9])       # doctest: +SKIP
    >>> [m.name for m in view.meshes]                                   # doctest: +SKIP
    ['oedema', 'enhancing tumour', 'necrotic core']
    >>> view.position = brain.info["tumour_centre_mm"]                 # doctest: +SKIP
    """

    position = traitlets.List(traitlets.Float(), default_value=[0.0, 0.0, 0.0])

    def __init__(self, image: Image | None = None, labels: Image | None = None, *,
                 values: Iterable[int] | None = None, meshes: Sequence[Mesh] = (),
                 smoothing: int = 10, reduction: float = 0.0, mode: str = "render",
                 height: int = 420, mesh_opacity: float = 1.0, xray: float = 0.6):
        if mode not in MODES:
            raise ParameterError(f"mode must be one of {list(MODES)}; got {mode!r}")
        if not (isinstance(height, int) and 100 <= height <= 4000):
            raise ParameterError(f"height must be a number of pixels from 100 to 4000; got {height!r}")
        for name, value in (("mesh_opacity", mesh_opacity), ("xray", xray)):
            if isinstance(value, bool) or not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
                raise ParameterError(f"{name} must be a number from 0 to 1; got {value!r}")
        self.image = _check_volume(image) if image is not None else None
        made = self._surfaces(labels, values, smoothing, reduction) if labels is not None else []
        self.meshes: list[Mesh] = [*made, *_check_meshes(meshes)]
        if self.image is None and not self.meshes:
            raise ParameterError("View3D needs an image, a label map or meshes to show")

        NiiVue, Volume, MeshWidget = _classes()
        self._nv = NiiVue(height=height, slice_type=MODES[mode], show_3d_crosshair=True,
                          is_orient_cube=True, back_color=(0.0, 0.0, 0.0, 1.0),
                          multiplanar_show_render=1, is_colorbar=False, mesh_xray=float(xray))
        self._nv.add_class("medlab-view3d-niivue")
        # seen from the front and a little from the patient's left and above: superior up,
        # the patient's left on the screen's right (as in radiology)
        self._nv.scene.render_azimuth, self._nv.scene.render_elevation = 150.0, 15.0
        if self.image is not None:
            self._nv.add_volume(Volume(data=_nifti_bytes(self.image), name="volume.nii", colormap="gray"))
            self._nv.volumes[0].observe(self._apply_position, names=["frac2mm_ortho"])
        for i, mesh in enumerate(self.meshes):
            self._nv.add_mesh(MeshWidget(data=_ply_bytes_ras(mesh), name=f"mesh{i}_label{mesh.label}.ply",
                                         rgba255=[*mesh.color, 255], opacity=float(mesh_opacity)))
        self._legend = W.HTML(self._legend_html())
        self._legend.add_class("medlab-view3d-legend")
        super().__init__([self._nv, self._legend])
        self.add_class("medlab-view3d")
        centre = self._scene_centre()
        self.position = [float(v) for v in centre]

    # ------------------------------------------------------------------ contents
    def _surfaces(self, labels, values, smoothing, reduction) -> list[Mesh]:
        if not isinstance(labels, Image) or not labels.is_label:
            raise ImageError("labels must be a medlab label map (kind='label'); wrap a mask with "
                             "image.with_array(mask, kind='label')")
        if self.image is not None and not self.image.overlaps(labels):
            lo, hi = labels.bounds()
            raise GeometryError(f"the label map (mm LPS {np.round(lo, 1).tolist()} to {np.round(hi, 1).tolist()}) "
                                "does not overlap the image in space; check that they belong to the same scan")
        return label_surfaces(labels, values, smoothing=smoothing, reduction=reduction)

    @property
    def niivue(self):
        """The ipyniivue widget inside (for niivue options such as clip planes or azimuth)."""
        return self._nv

    def _legend_html(self) -> str:
        rows = [f'<div class="medlab-view3d-item" data-label="{m.label}">'
                f'<span style="display:inline-block;width:0.9em;height:0.9em;margin-right:0.4em;'
                f'background:rgb{m.color}"></span>{html.escape(m.describe())}</div>' for m in self.meshes]
        if self.image is not None:
            rows.insert(0, f'<div class="medlab-view3d-item" data-label="volume">volume: '
                           f'{html.escape(self.image.describe())}</div>')
        return "".join(rows)

    def _scene_centre(self) -> np.ndarray:
        if self.image is not None:
            lo, hi = self.image.bounds()
        else:
            lo = np.min([m.bounds()[0] for m in self.meshes], axis=0)
            hi = np.max([m.bounds()[1] for m in self.meshes], axis=0)
        return (lo + hi) / 2

    # ------------------------------------------------------------------ crosshair
    @traitlets.validate("position")
    def _valid_position(self, proposal):
        value = list(proposal["value"])
        if len(value) != 3 or not np.all(np.isfinite(value)):
            raise ParameterError(f"position must be a point (x, y, z) in mm LPS with finite values; got {value}")
        return [float(v) for v in value]

    @traitlets.observe("position")
    def _apply_position(self, change=None) -> None:
        frac = self.crosshair_fraction()
        if frac is not None:
            self._nv.scene.crosshair_pos = [float(f) for f in frac]

    def crosshair_fraction(self) -> list[float] | None:
        """:attr:`position` as niivue's crosshair fraction, or None until niivue has loaded the volume.

        With a volume, niivue counts the crosshair in fractions of its own (de-obliqued) box,
        whose matrix comes back from the browser once the volume is loaded; until then the
        position waits and is applied on arrival. Without a volume the box is the meshes'.
        """
        ras = np.asarray(self.position) * _LPS_TO_RAS
        if self.image is not None:
            vol = self._nv.volumes[0]
            if vol.frac2mm_ortho is None:
                return None
            return vol.convert_mm2frac(ras.tolist())
        lo = np.min([m.to_ras().min(axis=0) for m in self.meshes], axis=0)
        hi = np.max([m.to_ras().max(axis=0) for m in self.meshes], axis=0)
        span = np.where(hi > lo, hi - lo, 1.0)
        return ((ras - lo) / span).tolist()

    def link(self, viewer) -> Callable[[], None]:
        """Follow a 2D viewer's crosshair (``viewer.position``, mm LPS); returns an unlink function.

        Both ways: a click in a plane of the ``'multiplanar'`` mode moves the viewer too.

        Examples
        --------
        >>> import numpy as np, medlab
        >>> from medlab.widgets import Viewer
        >>> scan = medlab.Image(np.ones((8, 16, 16), np.float32), spacing=(1.0, 1.0, 2.0))
        >>> view, viewer = View3D(scan), Viewer(scan)
        >>> unlink = view.link(viewer)
        >>> viewer.position = [4.0, 5.0, 6.0]
        >>> view.position
        [4.0, 5.0, 6.0]
        >>> unlink()
        """
        if not (isinstance(viewer, traitlets.HasTraits) and viewer.has_trait("position")):
            raise ParameterError(f"link needs a medlab Viewer (with a position trait); got {type(viewer).__name__}")

        def follow(src, dst):
            def sync(change):
                value = list(src.position)
                if len(value) == 3 and not np.allclose(value, dst.position, atol=1e-6):
                    dst.position = value
            return sync

        to_view, to_viewer = follow(viewer, self), follow(self, viewer)
        viewer.observe(to_view, names="position")
        self.observe(to_viewer, names="position")
        self._nv.on_location_change(self._location_changed)
        self.position = list(viewer.position)

        def unlink() -> None:
            viewer.unobserve(to_view, names="position")
            self.unobserve(to_viewer, names="position")
            self._nv.on_location_change(self._location_changed, remove=True)

        return unlink

    def _location_changed(self, location: dict) -> None:
        mm = location.get("mm") if isinstance(location, dict) else None
        if mm is not None and len(mm) >= 3 and np.all(np.isfinite(mm[:3])):
            self.position = (np.asarray(mm[:3], float) * _LPS_TO_RAS).tolist()


# ----------------------------------------------------------------------------- encoding
def _check_volume(image) -> Image:
    image = as_image(image)
    if image.ndim != 3 or image.rgb:
        raise ImageError(f"the 3D view renders a 3D scalar volume; got a {image.ndim}D{' colour' if image.rgb else ''} image")
    return image


def _check_meshes(meshes) -> list[Mesh]:
    meshes = list(meshes)
    bad = [type(m).__name__ for m in meshes if not isinstance(m, Mesh)]
    if bad:
        raise ParameterError(f"meshes must be medlab.mesh.Mesh objects; got {bad[0]}")
    return meshes


def _nifti_bytes(image: Image) -> bytes:
    """The image as NIfTI-1 bytes (RAS affine), written by medlab.save: one geometry code path."""
    from medlab.io import save

    if image.dtype == np.float64:            # half the bytes; display needs no more precision
        image = image.with_array(image.array.astype(np.float32))
    elif image.dtype.kind == "b":
        image = image.with_array(image.array.astype(np.uint8))
    with tempfile.TemporaryDirectory(prefix="medlab-view3d-") as folder:
        return save(image, Path(folder) / "volume.nii").read_bytes()


def _ply_bytes_ras(mesh: Mesh) -> bytes:
    """Binary PLY of the mesh in RAS (x, y negated: a proper rotation, so faces keep their winding)."""
    import trimesh

    tm = trimesh.Trimesh(mesh.to_ras(), mesh.faces, process=False)
    return tm.export(file_type="ply")
