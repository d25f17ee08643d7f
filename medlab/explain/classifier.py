"""The small 3D tumour classifier shipped with medlab (see :mod:`medlab.explain.train_classifier`)."""

from __future__ import annotations

from importlib import resources

from ..errors import ParameterError, ReadError

_FILES = {False: "tumour_classifier.pt", True: "tumour_classifier_random_labels.pt"}


def tumour_classifier(*, random_labels: bool = False):
    """The shipped FLAIR brain-tumour classifier: one logit, the log-odds of "tumour" (class 0).

    Trained by :mod:`medlab.explain.train_classifier` on :func:`medlab.data.classification_set`
    phantoms (64×64×32 voxels of 3×3×4 mm); ``metrics`` hold its held-out accuracy, seed and
    the exact command. Images reach it through its recorded preprocessing (intensity
    range 0-1 as the phantoms', resampling to 3×3×4 mm LPS axes), so a FLAIR-like volume on any
    grid can be explained; a tumour is called where the logit is positive.

    Parameters
    ----------
    random_labels : bool
        The same network, preprocessing and training data, trained on shuffled labels: the twin of
        the data randomisation test (:func:`medlab.explain.data_randomisation_test`). Its
        ``metrics`` record how much of its shuffled training labels it fitted
        (``training_accuracy``) and its held-out accuracy (near chance: it knows nothing of tumours).

    Returns
    -------
    Checkpoint

    Examples
    --------
    >>> from medlab.explain import tumour_classifier
    >>> ck = tumour_classifier()
    >>> ck.labels[0], ck.metrics["held_out_accuracy"] >= 0.9
    ('tumour', True)
    >>> twin = tumour_classifier(random_labels=True)
    >>> twin.config == ck.config, twin.metrics["training_labels"]
    (True, 'shuffled (data randomisation)')
    """
    from ..outputs import Checkpoint

    if not isinstance(random_labels, bool):   # "False" (a string from a form or a config) loaded the twin
        raise ParameterError(f"random_labels must be True or False; got {random_labels!r}")
    name = _FILES[random_labels]
    path = resources.files(__package__).joinpath(name)
    if not path.is_file():
        raise ReadError(f"the shipped checkpoint {name} is missing from medlab.explain: reinstall medlab, or "
                        f"train it with python -m medlab.explain.train_classifier (see its docstring)")
    with resources.as_file(path) as p:
        return Checkpoint.load(p)
