"""Sanity checks for saliency maps (Adebayo et al., "Sanity checks for saliency maps", NeurIPS 2018).

A map that explains the *model* must change when the model's learned weights are destroyed.

* **Cascading model-parameter randomisation**: the weights are re-initialised layer by layer
  from the output towards the input (on a copy: the user's model is never modified), and the
  map is recomputed after each step, for the same class and layer.
* **Data (label) randomisation**: the map of the model is compared with the map of the same
  network trained on shuffled labels (which memorised its training set and learned nothing
  about the task; :mod:`medlab.explain.train_classifier` makes one).

Similarity between the original and each randomised map (on the scan's grid): Spearman rank
correlation of the maps as computed (signed when the method's ``sign`` is ``"signed"``) and of
their absolute values (Adebayo et al. report both: "with" and "without absolute value"), SSIM (scikit-image, n-dimensional) and the Pearson correlation of HOG features
(scikit-image's ``hog``, 2D: computed per axial slice of a volume and concatenated, as
Adebayo et al. compare 2D images). A map whose rank correlation with the original stays at or
above ``threshold`` after full randomisation **barely changes**: it is flagged, in the table
(its title and a column) and in the randomised map's metadata. A map that became constant
(e.g. no positive Grad-CAM evidence left) has no rank correlation (NaN): it changed, and is not
flagged.

Adebayo et al. found that Integrated Gradients (and gradient ⊙ input, which it integrates)
barely change under randomisation, most visibly in absolute value: the input's own structure
multiplies every gradient, so the map keeps the image's edges whatever the weights. A flagged
Integrated Gradients map says so in its verdict; it is a property of the method, not a fault of
the run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import ParameterError
from ..image import Image
from ..stage import Choice, CurveOut, Float, ImageInput, ImageOut, Int, ModelInput, TableOut, stage

__all__ = ["SanityResult", "cascade_groups", "data_randomisation", "data_randomisation_test", "hog_similarity",
           "model_randomisation", "model_randomisation_test", "similarity", "spearman", "ssim"]

METHODS = ("grad_cam", "grad_cam_pp", "guided_grad_cam", "integrated_gradients", "smoothgrad", "occlusion",
           "attention_rollout")


# ---------------------------------------------------------------------------- similarity
def _values(a) -> np.ndarray:
    return np.asarray(a.array if isinstance(a, Image) else a, np.float64)


def _pair(a, b, what: str, dims: tuple[int, ...] = (2, 3)) -> tuple[np.ndarray, np.ndarray]:
    """Both maps as float arrays, checked: one shape, 2D or 3D, finite (a NaN made the rank
    correlation NaN, which reads as 'the map became constant: passed'; maps of different shapes
    raised numpy's errors, or for HOG compared unrelated slices)."""
    x, y = _values(a), _values(b)
    if x.shape != y.shape:
        raise ParameterError(f"{what}: the two maps have different shapes {x.shape} and {y.shape}; "
                             "put them on one grid first")
    if x.ndim not in dims or x.size == 0:
        raise ParameterError(f"{what}: maps must be {' or '.join(f'{d}D' for d in dims)} and not empty; "
                             f"got shape {x.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ParameterError(f"{what}: a map holds NaN or infinite values; an explanation stage never makes "
                             "them: check where the map came from")
    return x, y


def spearman(a, b) -> float:
    """Spearman rank correlation of two maps over every voxel (NaN if either is constant).

    Examples
    --------
    >>> import numpy as np
    >>> round(spearman(np.arange(10.0), np.arange(10.0) ** 3), 6)
    1.0
    """
    from scipy.stats import spearmanr

    x, y = (v.ravel() for v in _pair(a, b, "spearman", dims=(1, 2, 3)))
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(spearmanr(x, y).statistic)


def _scaled(a: np.ndarray) -> np.ndarray:
    m = np.abs(a).max()
    return a / m if m > 0 else a


def ssim(a, b) -> float:
    """Structural similarity of two maps, each divided by its largest magnitude (so a map and a
    scaled copy score 1); scikit-image's n-dimensional SSIM with the widest odd window that fits.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).random((16, 16))
    >>> round(ssim(x, 3 * x), 6)
    1.0
    """
    from skimage.metrics import structural_similarity

    x, y = (_scaled(v) for v in _pair(a, b, "ssim"))
    win = min(7, *(s if s % 2 else s - 1 for s in x.shape))
    if win < 3:
        return math.nan
    rng = float(max(x.max(), y.max()) - min(x.min(), y.min())) or 1.0
    return float(structural_similarity(x, y, data_range=rng, win_size=win))


def _hog(slice2d: np.ndarray, cell: int) -> np.ndarray:
    from skimage.feature import hog

    return hog(slice2d, orientations=9, pixels_per_cell=(cell, cell), cells_per_block=(2, 2), feature_vector=True)


def hog_similarity(a, b) -> float:
    """Pearson correlation of the HOG features of two maps (per axial slice in 3D).

    Cells of 8 pixels (fewer on small slices). NaN when the features are constant.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).random((32, 32))
    >>> round(hog_similarity(x, 2 * x), 6)
    1.0
    """
    x, y = (_scaled(v) for v in _pair(a, b, "hog_similarity"))
    slices = [(x, y)] if x.ndim == 2 else list(zip(x, y))
    h, w = slices[0][0].shape
    cell = max(2, min(8, h // 4, w // 4))
    if min(h, w) < 2 * cell:
        return math.nan
    fx = np.concatenate([_hog(p, cell) for p, _ in slices])
    fy = np.concatenate([_hog(q, cell) for _, q in slices])
    if np.ptp(fx) == 0 or np.ptp(fy) == 0:
        return math.nan
    return float(np.corrcoef(fx, fy)[0, 1])


def similarity(a, b) -> dict[str, float]:
    """Spearman rank correlation of the maps (``spearman``) and of their absolute values
    (``spearman_abs``, Adebayo et al.'s "absolute value" variant), SSIM and HOG similarity of two
    maps on one grid."""
    if isinstance(a, Image) and isinstance(b, Image) and not a.same_grid(b):
        raise ParameterError("similarity: the two maps are on different grids; resample one onto the other first")
    return {"spearman": spearman(a, b), "spearman_abs": spearman(np.abs(_values(a)), np.abs(_values(b))),
            "ssim": ssim(a, b), "hog": hog_similarity(a, b)}


KNOWN_INSENSITIVE = {
    "integrated_gradients": "as Adebayo et al. (2018) found for Integrated Gradients and gradient x input: the "
                            "input multiplies every gradient, so the map keeps the image's structure whatever the "
                            "weights. Do not read it as what the model learned",
}
"""Methods that Adebayo et al. found to fail model randomisation, with the reason given when flagged."""


# ---------------------------------------------------------------------------- randomisation
def cascade_groups(module, x, steps: int) -> list[list[str]]:
    """The model's layers with weights, from the output back to the input, in ``steps`` groups.

    The order is the order in which the layers run (recorded in one forward pass), reversed;
    the groups are consecutive and as equal in size as possible.
    """
    import torch

    from .network import evaluating

    order: list[str] = []
    hooks = []
    for name, m in module.named_modules():
        if name and any(True for _ in m.parameters(recurse=False)):
            hooks.append(m.register_forward_hook(lambda _m, _i, _o, n=name: order.append(n)))
    try:
        with torch.no_grad(), evaluating(module):
            module(x)
    finally:
        for h in hooks:
            h.remove()
    layers = list(dict.fromkeys(reversed(order)))
    if not layers:
        raise ParameterError("the model has no layer with weights to randomise")
    steps = max(1, min(int(steps), len(layers)))
    bounds = np.linspace(0, len(layers), steps + 1).round().astype(int)
    return [layers[bounds[i]:bounds[i + 1]] for i in range(steps)]


def randomise_layers(module, names: Sequence[str], seed: int) -> None:
    """Re-initialise the weights of the named layers in place (their own ``reset_parameters``:
    PyTorch's default initialisation; batch norm statistics reset too)."""
    import torch

    from ._common import randomness

    layers = dict(module.named_modules())
    for i, name in enumerate(names):
        m = layers[name]
        with randomness(seed * 100003 + i + 1):
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
            else:
                for p in m.parameters(recurse=False):
                    with torch.no_grad():
                        p.normal_(0.0, 0.02)


@dataclass
class SanityResult:
    """Maps and similarities of a sanity check.

    Attributes
    ----------
    original : Image
    randomised : list of Image
        After each cascade step (one map for data randomisation).
    steps : list of str
        What was randomised at each step.
    scores : list of dict
        ``{"spearman", "ssim", "hog"}`` of each randomised map with the original.
    flagged : bool
        The last map's rank correlation is at or above ``threshold``: the map barely changes.
    threshold : float
    """

    original: Image
    randomised: list = field(default_factory=list)
    steps: list = field(default_factory=list)
    scores: list = field(default_factory=list)
    threshold: float = 0.5
    test: str = "model randomisation"
    method: str = ""

    @property
    def flagged(self) -> bool:
        last = self.scores[-1]["spearman"] if self.scores else math.nan
        return bool(math.isfinite(last) and last >= self.threshold)

    def verdict(self) -> str:
        last = self.scores[-1]["spearman"] if self.scores else math.nan
        if self.flagged:
            known = KNOWN_INSENSITIVE.get(self.method)
            return (f"FLAGGED: after {self.test} the map barely changes (rank correlation {last:.2f} >= "
                    f"{self.threshold:g}): it does not depend on what the model learned"
                    + (f"; {known}" if known else ""))
        if not math.isfinite(last):
            return f"passed: after {self.test} the map is constant (no evidence left)"
        return f"passed: after {self.test} the map changes (rank correlation {last:.2f} < {self.threshold:g})"

    def table(self):
        from ..outputs import Table

        rows = []
        for i, (what, s) in enumerate(zip(self.steps, self.scores), 1):
            rows.append({"step": i, "randomised": what, "spearman": s["spearman"],
                         "spearman of |maps|": s.get("spearman_abs", math.nan), "ssim": s["ssim"],
                         "hog": s["hog"], "barely changes": bool(math.isfinite(s["spearman"])
                                                                 and s["spearman"] >= self.threshold)})
        return Table(rows, title=self.verdict())

    def curve(self):
        from ..outputs import Curve

        c = Curve("similarity", x_label="randomisation step (from the output layer)", y_label="similarity to the original")
        for i, s in enumerate(self.scores, 1):
            for k in ("spearman", "ssim", "hog"):
                if math.isfinite(s[k]):
                    c.append(k, i, s[k])
        return c

    def last_map(self) -> Image:
        m = self.randomised[-1]
        info = {"test": self.test, "flagged": self.flagged, "verdict": self.verdict(), **self.scores[-1]}
        return m.with_array(m.array, metadata={**m.metadata, "sanity": info})


Explainer = Callable[[Image, object], Image]


def model_randomisation(image: Image, model, explain: Explainer, *, steps: int = 4, seed: int = 0,
                        threshold: float = 0.5) -> SanityResult:
    """Cascading model-parameter randomisation of any explanation function.

    Parameters
    ----------
    image : Image
    model : Checkpoint, torch.nn.Module or Network
    explain : callable
        ``explain(image, network) -> Image`` on the image's grid; called with the model, then
        with copies whose top layers are progressively re-initialised (the same preprocessing).
    steps : int
        Cascade steps (groups of layers, from the output back to the input).
    seed : int
        Fixes the random weights.
    threshold : float
        Rank correlation at or above which the fully randomised map counts as unchanged.

    Returns
    -------
    SanityResult

    Examples
    --------
    >>> from skimage.filters import sobel
    >>> edges = lambda img, net: img.with_array(sobel(img.array))      # ignores the model
    >>> model_randomisation(img, model, edges).flagged                  # doctest: +SKIP
    True
    """
    from .geometry import network_input
    from .network import copy_module, resolve_model

    network = resolve_model(model)
    original = explain(image, network)
    x = network_input(image, network.input_record, source=network.source).tensor
    groups = cascade_groups(network.module, x, steps)
    result = SanityResult(original, threshold=threshold, method=getattr(explain, "method", ""))
    module = copy_module(network.module)
    done: list[str] = []
    from ..stage import progress

    for i, group in enumerate(progress(groups, total=len(groups), desc="randomising layers")):
        randomise_layers(module, group, seed + i)
        done += group
        copy = _with_module(network, module)
        m = explain(image, copy)
        result.randomised.append(m)
        result.steps.append(f"{len(done)} layers ({group[0]} ... {group[-1]})" if len(group) > 1 else group[0])
        result.scores.append(similarity(original, m))
    return result


def data_randomisation(image: Image, model, random_label_model, explain: Explainer, *,
                       threshold: float = 0.5) -> SanityResult:
    """The map of ``model`` against the map of the same network trained on shuffled labels."""
    from .network import resolve_model

    original = explain(image, resolve_model(model))
    other = explain(image, resolve_model(random_label_model, "random_label_model"))
    result = SanityResult(original, threshold=threshold, test="label randomisation",
                          method=getattr(explain, "method", ""))
    result.randomised.append(other)
    result.steps.append("the network trained on shuffled labels")
    result.scores.append(similarity(original, other))
    return result


def _with_module(network, module):
    from dataclasses import replace

    return replace(network, module=module, source=f"{network.source}, randomised")


# ---------------------------------------------------------------------------- stages
def method_function(method: str):
    """The stage function of an explanation method by name."""
    from .attention import attention_rollout
    from .cam import grad_cam, grad_cam_pp, guided_grad_cam
    from .gradients import integrated_gradients, smoothgrad
    from .perturbation import occlusion

    table = {"grad_cam": grad_cam, "grad_cam_pp": grad_cam_pp, "guided_grad_cam": guided_grad_cam,
             "integrated_gradients": integrated_gradients, "smoothgrad": smoothgrad, "occlusion": occlusion,
             "attention_rollout": attention_rollout}
    if method not in table:
        raise ParameterError(f"method must be one of {list(table)}; got {method!r}")
    return table[method]


def explainer(method: str, mask: Image | None = None, *, target_class: int = -1, layer: str = "auto",
              **options) -> Explainer:
    """``explain(image, network)`` for a method with its default parameters, for a fixed class and
    layer (fixed on the first call: later calls on randomised models explain the same class at
    the same layer)."""
    func = method_function(method).stage.func
    fixed = {"target_class": target_class, "layer": layer}

    def explain(image: Image, network) -> Image:
        kw = dict(options)
        kw["target_class"] = fixed["target_class"]
        if "layer" in method_function(method).stage.params:
            kw["layer"] = fixed["layer"]
        saliency, _ = func(image, network, mask, **kw)
        info = saliency.metadata["saliency"]
        fixed["target_class"] = info["class_index"]
        if info.get("layer") and fixed["layer"] == "auto":
            fixed["layer"] = info["layer"]
        return saliency

    explain.method = method   # a SanityResult names the method (and what is known about it) in its verdict
    return explain


def _sanity_inputs() -> dict:
    return {"image": ImageInput("intensity", help="the scan"),
            "model": ModelInput(help="the trained model"),
            "mask": ImageInput("label", optional=True, overlaps="image", help="as for the explanation methods")}


def _sanity_params() -> dict:
    return {"method": Choice(METHODS, "grad_cam", help="explanation method to check (its default parameters)"),
            "target_class": Int(-1, 999, -1, help="class to explain; -1: the predicted class (kept for the "
                                                   "randomised models)"),
            "threshold": Float(0.0, 1.0, 0.5, help="rank correlation at or above which the randomised map "
                                                   "counts as barely changed")}


@stage("Model randomisation test", group="explain", preview=None, **_sanity_inputs(), **_sanity_params(),
       steps=Int(1, 50, 4, help="cascade steps: groups of layers re-initialised from the output back"),
       seed=Int(0, 2**31 - 1, 0, help="fixes the random weights"),
       outputs={"original": ImageOut(grid="image"), "randomised": ImageOut(grid="image"),
                "similarity": CurveOut(), "table": TableOut()})
def model_randomisation_test(image, model, mask=None, *, method="grad_cam", target_class=-1, threshold=0.5,
                             steps=4, seed=0):
    """Cascading model-parameter randomisation (Adebayo et al. 2018) of one explanation method.

    The model's layers are re-initialised in ``steps`` groups from the output back to the input
    (on a copy), and the map is recomputed for the same class and layer after each group. The
    table gives the Spearman rank correlation, SSIM and HOG similarity of each randomised map
    with the original; its title says whether the map is **flagged** (barely changes after full
    randomisation: it does not explain what the model learned).

    Returns
    -------
    original : Image
        The map of the trained model.
    randomised : Image
        The map after every layer was randomised; ``metadata["sanity"]`` holds the verdict.
    similarity : Curve
        Spearman, SSIM and HOG per step.
    table : Table
        One row per step; ``"barely changes"`` column; the verdict as its title.

    Examples
    --------
    >>> original, randomised, curve, table = model_randomisation_test(image, model)   # doctest: +SKIP
    >>> table.title                                                                  # doctest: +SKIP
    'passed: after model randomisation the map changes (rank correlation 0.04 < 0.5)'
    """
    result = model_randomisation(image, model, explainer(method, mask, target_class=target_class), steps=steps,
                                 seed=seed, threshold=threshold)
    return result.original, result.last_map(), result.curve(), result.table()


@stage("Label randomisation test", group="explain", preview=None, **_sanity_inputs(),
       random_label_model=ModelInput(help="the same network trained on shuffled labels"), **_sanity_params(),
       outputs={"original": ImageOut(grid="image"), "randomised": ImageOut(grid="image"), "table": TableOut()})
def data_randomisation_test(image, model, mask=None, random_label_model=None, *, method="grad_cam",
                            target_class=-1, threshold=0.5):
    """Data randomisation test (Adebayo et al. 2018): the map of the model against the map of the
    same network trained on shuffled labels, for the same class and layer.

    ``medlab.explain.tumour_classifier(random_labels=True)`` is such a twin of the shipped
    classifier. Returns the two maps (the second with ``metadata["sanity"]``) and a one-row table
    whose title is the verdict.

    Examples
    --------
    >>> from medlab.explain import tumour_classifier
    >>> original, randomised, table = data_randomisation_test(
    ...     image, tumour_classifier(), random_label_model=tumour_classifier(random_labels=True))  # doctest: +SKIP
    """
    result = data_randomisation(image, model, random_label_model,
                                explainer(method, mask, target_class=target_class), threshold=threshold)
    return result.original, result.last_map(), result.table()
