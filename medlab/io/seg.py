"""DICOM Segmentation objects (SEG): a label map with its segment numbers and names.

A SEG stores one bit (or one fraction) per pixel per segment, as frames that point back to
the slices of the image series they were drawn on; empty frames are usually left out. It is
read with highdicom, the reference implementation of the SEG information object in Python
(pydicom alone returns the raw 0/1 frames, which medlab used to show as a 0-255 picture):
highdicom sorts the frames into a regular volume and gives its affine in LPS.

The result is a label :class:`~medlab.image.Image` whose voxel values are the segment numbers
and whose label names are the segment labels. Its grid covers the slices that hold frames,
on the source series' geometry, so ``resample_to(seg, reference=ct)`` puts every segment
voxel on its source voxel.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ReadError, warn
from ..image import Image

SEG_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.66.4": "Segmentation Storage",
    "1.2.840.10008.5.1.4.1.1.66.7": "Label Map Segmentation Storage",
}


def is_seg(ds) -> bool:
    """True for a DICOM Segmentation dataset (by SOP class, or Modality SEG)."""
    return str(ds.get("SOPClassUID", "")) in SEG_SOP_CLASSES or str(ds.get("Modality", "")).upper() == "SEG"


def read_seg(path: Path, metadata: dict[str, Any]) -> Image:
    """The label map of a DICOM SEG file; ``metadata`` is medlab's DICOM metadata of the file."""
    import highdicom as hd

    try:
        seg = hd.seg.segread(path)
    except Exception as exc:  # highdicom raises many types on a malformed SEG
        raise ReadError(f"{path}: this DICOM Segmentation cannot be read ({type(exc).__name__}: {exc}); "
                        "it is malformed or truncated. Export it again") from exc
    numbers = [int(n) for n in seg.segment_numbers]
    if not numbers:
        raise ReadError(f"{path}: this DICOM Segmentation holds no segment; there is nothing to load")
    if str(seg.segmentation_type).endswith("FRACTIONAL"):
        raise ReadError(
            f"{path} is a FRACTIONAL segmentation (a probability or occupancy per segment), not a label map; "
            "read it with highdicom (hd.seg.segread(path).get_volume()) and threshold the segment you need"
        )
    notes: list[str] = []
    volume = _volume(seg, path, notes)
    array, spacing, origin, direction = _geometry(volume)
    labels = {n: _label(seg, n) for n in numbers}
    meta = dict(metadata)
    meta.update(format="DICOM SEG", segments={n: labels[n][0] for n in numbers})
    if notes:
        meta["notes"] = [*meta.get("notes", []), *notes]
        for note in notes:
            warn(f"{path}: {note}")
    return Image(array, spacing, origin, direction, kind="label", labels=labels, metadata=meta)


def _volume(seg, path: Path, notes: list[str]):
    """Segments combined into one label volume (segment number per voxel)."""
    try:
        return seg.get_volume(combine_segments=True, relabel=False)
    except (ValueError, RuntimeError) as exc:
        if "overlap" not in str(exc).lower():
            raise _not_a_volume(path, exc) from exc
    notes.append("segments overlap; a label map holds one value per voxel, so where they overlap the highest "
                 "segment number is kept (highdicom's rule). Read single segments with highdicom to keep them all")
    try:
        return seg.get_volume(combine_segments=True, relabel=False, skip_overlap_checks=True)
    except (ValueError, RuntimeError) as exc:
        raise _not_a_volume(path, exc) from exc


def _not_a_volume(path: Path, exc: Exception) -> ReadError:
    return ReadError(f"{path}: the frames of this DICOM Segmentation do not form a regular volume ({exc}); "
                     "medlab loads segmentations of slice stacks: read it frame by frame with highdicom")


def _geometry(volume) -> tuple[np.ndarray, tuple, tuple, np.ndarray]:
    """medlab's ``[z, y, x]`` array, spacing, origin and direction from a highdicom Volume.

    highdicom's array axes are (slice, row, column) and its affine maps them to LPS; medlab's
    x is the column index (along a row) and z points along row × column, as for the series
    (dicom.stack_geometry), so the slice axis is flipped when highdicom stacked it the other way.
    """
    array = np.asarray(volume.array)
    affine = np.asarray(volume.affine, dtype=float)
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    along_slices, down_rows, along_row = affine[:3, 0], affine[:3, 1], affine[:3, 2]
    origin = affine[:3, 3]
    if np.dot(along_slices, np.cross(along_row, down_rows)) < 0:
        origin = origin + (array.shape[0] - 1) * along_slices
        along_slices = -along_slices
        array = array[::-1]
    lin = np.column_stack([along_row, down_rows, along_slices])
    spacing = np.linalg.norm(lin, axis=0)
    if not np.isfinite(spacing[2]) or spacing[2] <= 0:  # a single frame without a slice step
        lin[:, 2] = np.cross(lin[:, 0] / spacing[0], lin[:, 1] / spacing[1])
        spacing[2] = 1.0
    return np.ascontiguousarray(array), tuple(spacing), tuple(origin), lin / spacing[None, :]


def _label(seg, number: int) -> tuple[str, tuple[int, int, int]]:
    desc = seg.get_segment_description(number)
    name = str(getattr(desc, "segment_label", "") or f"segment {number}")
    lab = desc.get("RecommendedDisplayCIELabValue")
    if lab is None:
        from ..image import label_color

        return name, label_color(number)
    return name, _dicom_lab_to_rgb([int(v) for v in lab])


def _dicom_lab_to_rgb(lab: list[int]) -> tuple[int, int, int]:
    """DICOM's scaled CIELab (0-65535 each, PS3.3 C.10.7.1.1) to 8-bit sRGB."""
    from skimage.color import lab2rgb

    scaled = np.array([lab[0] / 65535 * 100, lab[1] / 65535 * 255 - 128, lab[2] / 65535 * 255 - 128])
    rgb = lab2rgb(scaled[None, None, :])[0, 0]
    return tuple(round(float(c) * 255) for c in np.clip(rgb, 0, 1))
