"""The segment widget's export bar: the newest label map as NIfTI/NRRD/MHA, as a DICOM SEG
referencing the source series, or as surface meshes (STL/OBJ/PLY in mm)."""

from __future__ import annotations

from pathlib import Path

import ipywidgets as widgets

from medlab.errors import ImageError, MedlabError, ParameterError, WriteError
from medlab.image import Image


class LabelExport:
    """Export of the newest label map, mixed into :class:`~medlab.widgets.segment.SegmentWidget`.

    It uses the widget's ``labels`` (the newest label map), ``original`` (the scan, for its DICOM
    source), ``panel`` (for the status line) and ``_safely`` (button clicks never raise).
    """

    @property
    def dicom_source(self) -> str | None:
        """The DICOM series (folder or file) the image was loaded from, or None."""
        meta = self.original.metadata
        src = meta.get("source")
        return str(src) if meta.get("format") == "DICOM" and src and Path(str(src)).exists() else None

    def _build_save(self) -> widgets.Widget:
        """The export bar: a file name, an overwrite box and a button per format."""
        self.save_path = widgets.Text(value="", placeholder="e.g. tumour.nii.gz · tumour.nrrd · tumour_seg.dcm · tumour.stl",
                                      description="file", style={"description_width": "initial"},
                                      layout=widgets.Layout(width="30em"))
        self.save_path.add_class("medlab-segment-save-path")
        self.save_overwrite = widgets.Checkbox(value=False, description="overwrite", indent=False,
                                               layout=widgets.Layout(width="8em"))
        self.save_overwrite.add_class("medlab-segment-save-overwrite")
        buttons = []
        for what, text, tip in (("labels", "Save label map", "NIfTI (.nii.gz), NRRD or MHA: overlays the scan exactly"),
                                ("seg", "Save DICOM SEG", ("a DICOM Segmentation referencing the source series "
                                                           "(for images loaded from DICOM)")),
                                ("mesh", "Save surface mesh", "STL, OBJ or PLY in mm (LPS), one file per label")):
            b = widgets.Button(description=text, icon="download", tooltip=tip, layout=widgets.Layout(width="auto"))
            b.add_class(f"medlab-segment-save-{what}")
            b.on_click(lambda _, w=what: self._safely(lambda: self._save_clicked(w)))
            buttons.append(b)
        self.save_seg_button = buttons[1]
        self.save_seg_button.disabled = self.dicom_source is None
        if self.dicom_source is None:
            self.save_seg_button.tooltip = "the image was not loaded from a DICOM series, so a SEG has nothing to refer to"
        return widgets.VBox([widgets.HTML("<b>Save the newest label map</b>"),
                             widgets.HBox([self.save_path, self.save_overwrite, *buttons],
                                          layout=widgets.Layout(flex_flow="row wrap", align_items="center"))])

    def _newest_labels(self) -> Image:
        labels = self.labels
        if labels is None:
            raise MedlabError("there is no label map yet: segment with a method first (Apply)")
        return labels

    def _target(self, path) -> Path:
        if path is None or not str(path).strip():   # str(None) would be a file named "None"
            raise MedlabError("type a file name first, e.g. tumour.nii.gz, tumour_seg.dcm or tumour.stl")
        return Path(path).expanduser()

    def save_labels(self, path, *, overwrite: bool = False) -> Path:
        """Write the newest label map (NIfTI, NRRD or MHA by the suffix; atomic)."""
        from medlab.io import save

        written = save(self._newest_labels(), self._target(path), overwrite=overwrite)
        self.panel.show_status(f"label map written to {written}", "ok")
        return written

    def save_dicom_seg(self, path, *, overwrite: bool = False) -> Path:
        """Write the newest label map as a DICOM SEG referencing the series the image came from."""
        from medlab.segment import write_dicom_seg

        source = self.dicom_source
        if source is None:
            raise MedlabError("the image was not loaded from DICOM (or its files are gone), so a DICOM SEG has no "
                              "series to refer to; save a NIfTI instead")
        labels = self._newest_labels()
        meta = labels.metadata
        deep = "method" not in meta and str(meta.get("description", "")).startswith("segmented by")
        series = str(self.original.metadata.get("dicom", {}).get("SeriesInstanceUID") or "") or None
        written = write_dicom_seg(labels, source, self._target(path), series=series, overwrite=overwrite,
                                  algorithm_type="automatic" if deep and not meta.get("edited") else "semiautomatic",
                                  algorithm_family="ArtificialIntelligence" if deep else None)
        self.panel.show_status(f"DICOM SEG written to {written}", "ok")
        return written

    def save_mesh(self, path, *, overwrite: bool = False) -> list[Path]:
        """Write the surface of each label of the newest label map (STL, OBJ or PLY by the suffix;
        in mm, LPS). With several labels, one file each: ``<name>_<value><suffix>``."""
        from medlab.mesh import MESH_FORMATS, label_surfaces, save_mesh

        labels, target = self._newest_labels(), self._target(path)
        suffix = target.suffix.lower()
        if suffix not in MESH_FORMATS:
            raise ParameterError(f"a mesh file must end in {', '.join(MESH_FORMATS)}; got {target.name!r}")
        if labels.ndim != 3:
            raise ImageError("surfaces need a 3D label map; this one is 2D")
        meshes = label_surfaces(labels)
        paths = [target] if len(meshes) == 1 else [target.with_name(f"{target.stem}_{m.label}{suffix}") for m in meshes]
        taken = [p for p in paths if p.exists()] if not overwrite else []
        if taken:   # every file or none: not the first surfaces written and then a refusal
            raise WriteError(f"{', '.join(p.name for p in taken)} exist(s) already; tick overwrite to replace, or "
                             "choose another name (no surface was written)")
        written = [save_mesh(m, p, overwrite=overwrite) for m, p in zip(meshes, paths)]
        self.panel.show_status(f"{len(written)} surface(s) written: {', '.join(p.name for p in written)}", "ok")
        return written

    def _save_clicked(self, what: str) -> None:
        action = {"labels": self.save_labels, "seg": self.save_dicom_seg, "mesh": self.save_mesh}[what]
        action(self.save_path.value, overwrite=self.save_overwrite.value)
