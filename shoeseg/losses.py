"""detectron2's loss names, which the study's loss table and every log and metrics file of ShoeSeg use.

torchvision's Mask R-CNN returns ``loss_classifier``, ``loss_box_reg``, ``loss_mask``, ``loss_objectness`` and
``loss_rpn_box_reg``; the study reported detectron2's ``total_loss``, ``loss_cls``, ``loss_box_reg``,
``loss_mask``, ``loss_rpn_cls`` and ``loss_rpn_loc``. Training and evaluation both name losses through here.
"""

from __future__ import annotations

from typing import Any

#: torchvision's loss names -> detectron2's.
LOSS_NAMES = {
    "loss_classifier": "loss_cls",
    "loss_box_reg": "loss_box_reg",
    "loss_mask": "loss_mask",
    "loss_objectness": "loss_rpn_cls",
    "loss_rpn_box_reg": "loss_rpn_loc",
}
LOSS_KEYS = ("total_loss", "loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc")


def detectron2_losses(loss_dict: dict[str, Any]) -> dict[str, float]:
    """torchvision's loss dict renamed to detectron2's names, with their sum as ``total_loss``.

    Example:
        >>> detectron2_losses({"loss_classifier": 0.5, "loss_box_reg": 0.25, "loss_mask": 0.5,
        ...                    "loss_objectness": 0.125, "loss_rpn_box_reg": 0.125})["total_loss"]
        1.5
    """
    out = {LOSS_NAMES.get(k, k): float(v) for k, v in loss_dict.items()}
    extra = {k: v for k, v in out.items() if k not in LOSS_KEYS}  # ``loss_mask_boundary`` and ``loss_mask_point`` when trained
    return {"total_loss": sum(out.values()), **{k: out[k] for k in LOSS_KEYS[1:] if k in out}, **extra}
