"""Class activation maps: heatmaps on the original image, overlays, PNG export, pointing game.

Laid out like pytorch-grad-cam (``grad-cam`` on PyPI), whose ``BaseCAM`` owns the hooks and the
forward/backward loop while each method supplies only how activations and gradients combine:

- ``methods``   the CAM methods by name: HiResCAM (the default), Grad-CAM, Grad-CAM++.
  HiResCAM is Grad-CAM without the gradient average: both give the same map at the final
  feature map of a pooled linear head, and only HiResCAM stays faithful at an earlier, finer
  layer (Draelos & Carin 2020), which is where it localises the phantoms' lesions
  (``models.gradcam_target_layer``);
- ``targets``   which output score a map explains (the binary head's single logit done right);
- ``geometry``  the network input's crop box on the original image, maps moved back onto it;
- ``explainer`` :class:`Explainer` (a private, hook-free-at-rest copy of the model) and
  :class:`Explanation` (one image's map for one class);
- ``overlay``   colour-mapped overlays, the exported PNG, shrinking an image with its map;
- ``pointing``  the pointing game on synthetic phantoms with known lesions (a metric);
- ``sanity``    the cascading model-parameter randomisation check (a metric);
- ``gallery``   the Explain page's per-split verdicts, filtered and sorted.

Every public name is re-exported here, so ``from cxr_core.explain import X`` keeps working.
"""

from .explainer import Explainer, Explanation
from .gallery import GalleryItem, card_dataset, predict_split, select_items
from .geometry import crop_box, to_original
from .methods import DEFAULT_METHOD, METHOD_LABELS, METHODS
from .overlay import COLORMAPS, cam_png, downscale, overlay
from .pointing import PointingResult, pointing_game
from .sanity import RANDOMISATION_CASCADE, RandomisationStage, cascading_randomisation
from .targets import PredictedClassTarget, Target, class_target

__all__ = [
    "COLORMAPS",
    "DEFAULT_METHOD",
    "METHODS",
    "METHOD_LABELS",
    "RANDOMISATION_CASCADE",
    "Explainer",
    "Explanation",
    "GalleryItem",
    "PointingResult",
    "PredictedClassTarget",
    "RandomisationStage",
    "Target",
    "cam_png",
    "card_dataset",
    "cascading_randomisation",
    "class_target",
    "crop_box",
    "downscale",
    "overlay",
    "pointing_game",
    "predict_split",
    "select_items",
    "to_original",
]
