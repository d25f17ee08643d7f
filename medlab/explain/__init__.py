"""Explanations of a model's output in the scan's physical space, and whether to trust them.

Every method is a declared stage (group ``"explain"``, inputs ``image``, ``model`` and an
optional label ``mask``) that returns a saliency :class:`~medlab.Image` **on the scan's own
grid** and a table of numbers. The map is computed on the network input (after the
checkpoint's recorded preprocessing, :mod:`medlab.explain.geometry`), upsampled to it, and
resampled back through every reorientation, resampling, crop and pad at once, so it overlays
the original scan (and saves as NIfTI with its geometry). Sign and normalisation are
parameters, recorded in ``saliency.metadata["saliency"]``; no map is ever flipped.

=======================  ================================================================
family                   stages
=======================  ================================================================
class activation maps    :func:`grad_cam` (captum ``LayerGradCam``), :func:`grad_cam_pp`,
                         :func:`guided_grad_cam` (captum ``GuidedGradCam``)
gradients                :func:`integrated_gradients`, :func:`smoothgrad` (captum)
perturbation             :func:`occlusion` (exact by incremental inference, batched, mm; coarse-to-fine opt-in)
transformers             :func:`attention_rollout` (MONAI ``ViT``)
trust                    :func:`model_randomisation_test`, :func:`data_randomisation_test`
                         (Adebayo et al. 2018), :func:`deletion_insertion` (faithfulness)
=======================  ================================================================

Targets: a class logit of a classifier, or a class channel of a segmentation network summed
over a region (points in mm with a radius, a label map, or the predicted region). Layers:
``layer="auto"`` picks the last convolutional block; :func:`candidate_layers` lists the names a
widget can offer. Localisation against a known mask uses :mod:`medlab.metrics`
(energy in mask, pointing game, IoU) and appears in each method's table.

Examples
--------
>>> from medlab.data import classification_set
>>> from medlab.explain import grad_cam, model_randomisation_test, tumour_classifier
>>> image, label, tumour = classification_set(n=2, seed=5)[1]                  # doctest: +SKIP
>>> model = tumour_classifier()
>>> saliency, numbers = grad_cam(image, model, tumour)                          # doctest: +SKIP
>>> original, randomised, similarity, table = model_randomisation_test(image, model)  # doctest: +SKIP
"""

# imported in the order a method picker lists them
from .cam import grad_cam, grad_cam_pp, guided_grad_cam  # isort: skip
from .gradients import integrated_gradients, smoothgrad  # isort: skip
from .perturbation import occlusion  # isort: skip
from .attention import attention_rollout  # isort: skip
from .sanity import data_randomisation_test, model_randomisation_test  # isort: skip
from .faithfulness import deletion_insertion  # isort: skip
from ._common import LayerName, table_value  # isort: skip
from .classifier import tumour_classifier  # isort: skip
from .network import candidate_layers, find_target_layer, resolve_model  # isort: skip
from .sanity import data_randomisation, hog_similarity, model_randomisation, similarity, spearman, ssim  # isort: skip

__all__ = [
    "LayerName",
    "attention_rollout",
    "candidate_layers",
    "data_randomisation",
    "data_randomisation_test",
    "deletion_insertion",
    "find_target_layer",
    "grad_cam",
    "grad_cam_pp",
    "guided_grad_cam",
    "hog_similarity",
    "integrated_gradients",
    "model_randomisation",
    "model_randomisation_test",
    "occlusion",
    "resolve_model",
    "similarity",
    "smoothgrad",
    "spearman",
    "ssim",
    "table_value",
    "tumour_classifier",
]
