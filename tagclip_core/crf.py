"""Optional dense-CRF post-processing of a label map's scores (CLIP-ES's eval_cam_with_crf.py settings).

Uses `pydensecrf2` (import name `pydensecrf`), which is not a dependency: it builds from source (a C++
compiler, a few minutes) and is imported only when a CRF is asked for.

The reference feeds the CRF's bilateral term an odd guide image: BGR pixels minus the Caffe means
(104.008, 116.669, 122.675), cast to uint8, which wraps negative values modulo 256. We reproduce that guide
(with the wrap made explicit) so the published CRF gains apply; the scores are [background, tags...] with
background = 1 - max, as without the CRF.
"""

from __future__ import annotations

import numpy as np

from .config import MaskConfig
from .errors import TagCLIPError

# Caffe's ImageNet channel means in BGR order, subtracted from the guide image by the reference.
_GUIDE_MEAN_BGR = np.array([104.008, 116.669, 122.675])


def reference_guide(rgb: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] guide image as the reference builds it from an RGB uint8 image: BGR - mean, wrapped."""
    shifted = rgb[..., ::-1].astype(np.float32) - _GUIDE_MEAN_BGR.astype(np.float32)
    return np.ascontiguousarray(np.mod(np.trunc(shifted).astype(np.int64), 256).astype(np.uint8))


def dense_crf(rgb: np.ndarray, probs: np.ndarray, config: MaskConfig) -> np.ndarray:
    """Posterior [K, H, W] float32 of a fully connected CRF over scores probs [K, H, W] (K = 1 + tags).

    rgb: uint8 [H, W, 3] image at the scores' size. Raises TagCLIPError when pydensecrf2 is not installed.
    """
    try:
        import pydensecrf.densecrf as dcrf
        from pydensecrf.utils import unary_from_softmax
    except ImportError as error:
        raise TagCLIPError("dense CRF needs the optional package pydensecrf2 (pip install pydensecrf2)") from error
    classes, height, width = probs.shape
    crf = dcrf.DenseCRF2D(width, height, classes)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs.astype(np.float32))))
    crf.addPairwiseGaussian(sxy=config.crf_pos_xy_std, compat=config.crf_pos_weight)
    crf.addPairwiseBilateral(
        sxy=config.crf_bi_xy_std, srgb=config.crf_bi_rgb_std, rgbim=reference_guide(rgb), compat=config.crf_bi_weight
    )
    return np.array(crf.inference(config.crf_iterations), dtype=np.float32).reshape(classes, height, width)
