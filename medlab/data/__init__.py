"""Sample data: phantoms with ground truth, samples shipped by installed packages, and a
checksummed remote registry.

Phantoms (deterministic from ``seed``; each returns its ground truth):

- :func:`brain_mri` - T1 (post-contrast), T2, FLAIR of a head with a tumour; Rician noise,
  bias field, label map of every tissue.
- :func:`chest_ct` - chest CT in HU: lungs, airways, vessels, heart, ribs, spine, nodules.
- :func:`mammogram` - 2D mammogram with fibroglandular texture and micro-calcifications.
- :func:`registration_pair` - T1/T2 of one head with a known rigid or affine transform.
- :func:`classification_set` - volumes with and without a tumour, with tumour masks.

Real images:

- :func:`list_samples` / :func:`load_sample` - shipped inside pydicom, nibabel,
  scikit-image and dipy: nothing to download.
- :func:`remote_entries` / :func:`fetch` - larger public images at pinned commits,
  checksummed, cached in ``$MEDLAB_DATA_DIR`` (mirror: ``$MEDLAB_DATA_URL``).

Examples
--------
>>> from medlab import data
>>> p = data.brain_mri(size=(64, 64, 32), seed=0)
>>> p.flair.modality
'MR'
"""

from .brain import BRAIN_LABELS, brain_mri
from .chest import CHEST_LABELS, chest_ct
from .mammo import MAMMO_LABELS, mammogram
from .pairs import ClassificationSet, RegistrationPair, classification_set, registration_pair
from .phantoms import Phantom
from .registry import data_dir, fetch, remote_entries
from .samples import list_samples, load_sample

__all__ = [
    "BRAIN_LABELS",
    "CHEST_LABELS",
    "MAMMO_LABELS",
    "ClassificationSet",
    "Phantom",
    "RegistrationPair",
    "brain_mri",
    "chest_ct",
    "classification_set",
    "data_dir",
    "fetch",
    "list_samples",
    "load_sample",
    "mammogram",
    "registration_pair",
    "remote_entries",
]
