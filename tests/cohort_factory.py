"""Small phantom cohorts for the cohort tests: a folder of T1 images and a recipe recorded on
the first one."""

from __future__ import annotations

from pathlib import Path

import medlab
from medlab.recipe import Recipe


def phantom_cohort(root: Path, ids, *, components: bool = False) -> tuple[Path, Recipe]:
    """``root/images/<id>.nii.gz`` for each id (20×20×10 phantoms, seed = position), and the
    recipe smoothing → Otsu (→ connected components when ``components``)."""
    from medlab.preprocess import gaussian_smooth
    from medlab.segment import connected_components, otsu_threshold

    folder = Path(root) / "images"
    folder.mkdir()
    for i, cid in enumerate(ids):
        medlab.save(medlab.data.brain_mri(size=(20, 20, 10), seed=i, contrasts=("t1",)).t1, folder / f"{cid}.nii.gz")
    image = medlab.load(folder / f"{ids[0]}.nii.gz")
    with Recipe.record(image) as recipe:
        mask = otsu_threshold(gaussian_smooth(image, sigma=1.0))
        if components:
            connected_components(mask)
    return folder, recipe
