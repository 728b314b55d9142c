"""Inference: images in, shoes out (score, box, mask at the image's size, polygons).

The :class:`Predictor` loads a model once, keeps it in eval mode and runs it under
``torch.inference_mode()`` (with float16 autocast on CUDA), a batch of images at a time. Each soft mask, pasted
at the original image size, is refined along the image's edges (and, when asked, its quality multiplied into
the score: :mod:`shoeseg.outlines`), then thresholded at 0.5; polygons come from
:func:`shoeseg.geometry.mask_to_polygons`, traced on a crop around each box rather than on the whole image.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from shoeseg.device import autocast, configure_for_speed, resolve_device
from shoeseg.geometry import (
    MIN_PART_WIDTH_PX,
    POLYGON_MAX_VERTICES,
    POLYGON_TOLERANCE_PX,
    POLYGON_TOLERANCE_REL,
    flip_polygons_x,
    mask_to_polygons,
)
from shoeseg.heads import mask_probabilities
from shoeseg.outlines import REFINE_EPS, REFINE_RADIUS_REL, grey, maskness, refine_in_box

log = logging.getLogger(__name__)

#: The serving score threshold of a checkpoint that records none (the settings' default too).
DEFAULT_SCORE_THRESH = 0.5


def serving_score_thresh(given: float | None, recorded: float | None) -> float:
    """The score threshold to serve with: ``given``, else the one the checkpoint ``recorded``, else
    :data:`DEFAULT_SCORE_THRESH`."""
    if given is not None:
        return given
    return DEFAULT_SCORE_THRESH if recorded is None else recorded


@dataclass(frozen=True)
class OutputSettings:
    """What a prediction gives back, for the PyTorch and the exported predictor alike; the network's own
    settings (input size, proposals, detections per image) are the checkpoint's
    (:class:`shoeseg.model.ModelConfig`).

    Args:
        score_thresh: detections below this score are dropped (detectron2's ``SCORE_THRESH_TEST``).
        mask_thresh: mask probability threshold.
        tolerance_px / tolerance_rel / max_vertices: the polygons' vertex budget
            (:func:`shoeseg.geometry.mask_to_polygons`): a tolerance in pixels, one relative to each shoe's box
            diagonal (the larger wins), and a cap on the vertices of one polygon.
        min_area_px: mask parts smaller than this become no polygon (nor do parts thinner on average than
            :data:`shoeseg.geometry.MIN_PART_WIDTH_PX`, lines Label Studio would not draw).
        batch_size: images per forward pass.
        mask_refine / mask_refine_eps: the edge-guided refinement of every soft mask before it is thresholded
            (:func:`shoeseg.outlines.refine_in_box`): the guided filter's radius relative to the box diagonal
            (0: off) and its regulariser.
        mask_rescore: multiply each detection's score by its mask's quality (:func:`shoeseg.outlines.maskness`);
            a detection that falls below the threshold of the call is dropped. Off by default: measured on and
            off in docs/real-data.md.
    """

    score_thresh: float = DEFAULT_SCORE_THRESH
    mask_thresh: float = 0.5
    tolerance_px: float = POLYGON_TOLERANCE_PX
    tolerance_rel: float = POLYGON_TOLERANCE_REL
    max_vertices: int | None = POLYGON_MAX_VERTICES
    min_area_px: float = 16.0
    batch_size: int = 2
    mask_refine: float = REFINE_RADIUS_REL
    mask_refine_eps: float = REFINE_EPS
    mask_rescore: bool = False


@dataclass(eq=False)
class Detection:
    """One detected instance.

    Args:
        label: class name.
        score: confidence in ``[0, 1]``.
        box_xyxy: box in pixels of the input image.
        mask: bool ``(H, W)`` mask at the input image's size (``None`` for a candidate asked for without one,
            ``Predictor.predict(masks_from=...)``).
        polygons: ``(N, 2)`` float arrays in pixels (several parts for a split mask), largest first.
    """

    label: str
    score: float
    box_xyxy: tuple[float, float, float, float]
    mask: np.ndarray | None
    polygons: tuple[np.ndarray, ...]

    def to_region(self):
        """This detection as a canonical :class:`via_tools.model.Region` (polygons, label, score)."""
        from via_tools.model import Region

        return Region(label=self.label, polygons=self.polygons, score=min(max(float(self.score), 0.0), 1.0))


def as_rgb_uint8(image: np.ndarray, *, where: str = "image") -> np.ndarray:
    """An RGB uint8 ``(H, W, 3)`` array, C-contiguous and writable, from an RGB, gray or RGBA uint8 image.

    Raises:
        ValueError: another shape or pixel type; the message starts with ``where``.
    """
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{where}: expected an RGB (H, W, 3) array, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise ValueError(f"{where}: expected uint8 pixels, got {arr.dtype}")
    if arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if not arr.flags.writeable or not arr.flags.c_contiguous:
        arr = np.array(arr, copy=True, order="C")  # torch wants writable memory
    return arr


def image_to_tensor(image: np.ndarray, device: torch.device, *, where: str = "image") -> torch.Tensor:
    """An RGB uint8 ``(H, W, 3)`` array (gray and RGBA accepted) as a float ``(3, H, W)`` tensor in ``[0, 1]``."""
    t = torch.from_numpy(as_rgb_uint8(image, where=where)).to(device, non_blocking=True)
    return t.permute(2, 0, 1).float().div_(255.0)


def _int8_linear(module: nn.Module) -> nn.Module:
    """``module`` with its linear layers in dynamic int8 (the box head's two 1024-wide layers score every
    proposal); unchanged, with a warning, where this torch no longer offers dynamic quantization."""
    import warnings

    try:
        from torch.ao.quantization import quantize_dynamic
    except ImportError:
        log.warning("this torch has no dynamic int8 quantization: serving the box head in float32")
        return module
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch 2.9+ marks torch.ao.quantization deprecated
        return quantize_dynamic(module, {nn.Linear}, dtype=torch.qint8)



def mirror_images(images: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The horizontally mirrored images (for :meth:`Predictor.predict_with_flip` and flip-consistency scores)."""
    return [np.ascontiguousarray(np.asarray(im)[:, ::-1]) for im in images]


def mirror_back(detections: Sequence[Sequence[Detection]], widths_px: Sequence[int]) -> list[list[Detection]]:
    """Detections made on mirrored images, mapped back into the frames of the originals (``widths_px`` wide)."""
    back: list[list[Detection]] = []
    for dets, w in zip(detections, widths_px, strict=True):
        w = int(w)
        back.append([
            Detection(
                label=d.label,
                score=d.score,
                box_xyxy=(w - d.box_xyxy[2], d.box_xyxy[1], w - d.box_xyxy[0], d.box_xyxy[3]),
                mask=np.ascontiguousarray(d.mask[:, ::-1]),
                polygons=flip_polygons_x(d.polygons, w),
            )
            for d in dets
        ])
    return back

class Predictor:
    """Runs a trained model on images and returns :class:`Detection` lists.

    Args:
        model: a Mask R-CNN from :func:`shoeseg.model.build_model` or a loaded checkpoint.
        class_names: class names in class-index order.
        model_version: the checkpoint's version id.
        device: ``auto``, ``cpu``, ``cuda`` or a :class:`torch.device`.
        flip_tta: test-time flip augmentation (:meth:`forward_raw`): about twice the compute.
        **outputs: what a prediction gives back, :class:`OutputSettings`' fields (``score_thresh``,
            ``mask_thresh``, ``tolerance_px``, ``tolerance_rel``, ``max_vertices``, ``min_area_px``,
            ``batch_size``); its defaults otherwise.

    Example:
        >>> predictor = Predictor.from_checkpoint("models/versions/v1/model.pt")  # doctest: +SKIP
        >>> [d.label for d in predictor.predict([image])[0]]  # doctest: +SKIP
        ['shoe', 'shoe']
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        class_names: Sequence[str],
        model_version: str = "unversioned",
        device: str | torch.device = "auto",
        flip_tta: bool = False,
        **outputs: Any,
    ) -> None:
        self.device = resolve_device(device)
        configure_for_speed(self.device)
        self.model = model.eval().to(self.device)
        self.class_names = list(class_names)
        self.model_version = model_version
        self._set_outputs(OutputSettings(**outputs))
        self.flip_tta = bool(flip_tta)
        n_out = model.roi_heads.box_predictor.cls_score.out_features - 1
        if n_out != len(self.class_names):
            raise ValueError(f"{len(self.class_names)} class names {self.class_names} for a model with {n_out} classes")

    def _set_outputs(self, outputs: OutputSettings) -> None:
        """The settings of what a prediction gives back (scores kept, masks, the polygons' vertex budget)."""
        self.score_thresh = float(outputs.score_thresh)
        self.mask_thresh = float(outputs.mask_thresh)
        self.tolerance_px = float(outputs.tolerance_px)
        self.tolerance_rel = float(outputs.tolerance_rel)
        self.max_vertices = None if outputs.max_vertices is None else int(outputs.max_vertices)
        self.min_area_px = float(outputs.min_area_px)
        self.batch_size = max(1, int(outputs.batch_size))
        if outputs.mask_refine < 0 or outputs.mask_refine_eps <= 0:
            raise ValueError(f"mask_refine must be >= 0 and mask_refine_eps > 0, got {outputs.mask_refine} and "
                             f"{outputs.mask_refine_eps}")
        self.mask_refine = float(outputs.mask_refine)
        self.mask_refine_eps = float(outputs.mask_refine_eps)
        self.mask_rescore = bool(outputs.mask_rescore)
        self._lock = threading.Lock()

    @property
    def outputs(self) -> OutputSettings:
        """What this predictor's predictions give back, as :class:`OutputSettings`."""
        return OutputSettings(**{f.name: getattr(self, f.name) for f in fields(OutputSettings)})

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, *, device: str | torch.device = "auto", score_thresh: float | None = None,
        flip_tta: bool | None = None, **kwargs: Any
    ) -> Predictor:
        """Loads a checkpoint (``weights_only=True``) into a predictor, with the checkpoint's serving settings
        (a dynamic-int8 box head on the CPU when it asks for one; flip TTA as it records, unless ``flip_tta``
        is given; the score threshold chosen on validation images when it records one, unless ``score_thresh``
        is given, else :data:`DEFAULT_SCORE_THRESH`).

        The checkpoint's own threshold (or None) stays in ``checkpoint_score_thresh`` whatever is served.

        An exported file (``.onnx``, ``.ts``, see :mod:`shoeseg.export`) is not a checkpoint:
        :func:`shoeseg.runtime.load_predictor` opens either.

        Example:
            >>> Predictor.from_checkpoint("runs/shoes/model.pt", device="cpu").class_names  # doctest: +SKIP
            ['shoe']
        """
        from shoeseg.checkpoint import load_checkpoint

        ckpt = load_checkpoint(path)
        serving = ckpt.model_config  # the checkpoint's serving choices: flip TTA, an int8 box head
        p = cls(ckpt.model, class_names=ckpt.class_names, model_version=ckpt.version, device=device,
                score_thresh=serving_score_thresh(score_thresh, ckpt.serve_score_thresh),
                flip_tta=serving.flip_tta if flip_tta is None else flip_tta, **kwargs)
        if serving.int8_box_head and p.device.type == "cpu":
            p.model.roi_heads.box_head = _int8_linear(p.model.roi_heads.box_head)
        p.checkpoint_path = Path(path)
        p.checkpoint_score_thresh = ckpt.serve_score_thresh
        return p

    @property
    def input_fit(self) -> tuple[int, int]:
        """``(min_size, max_size)`` of the model's own test-time resize: larger inputs only cost memory.

        Example:
            >>> predictor.input_fit  # doctest: +SKIP
            (800, 1333)
        """
        transform = self.model.transform
        return int(transform.min_size[-1]), int(transform.max_size)

    # -- batched prediction -------------------------------------------------------------------------

    def forward_raw(self, images: Sequence[np.ndarray], *, score_thresh: float | None = None,
                    flip_tta: bool | None = None, masks_from: float | None = None) -> list[dict[str, torch.Tensor]]:
        """The model's outputs for a batch (boxes, labels, scores, soft masks at image size).

        ``masks_from`` (``None``: every detection) runs the mask head only on detections scoring at least that:
        ``masks`` then holds the first ``K`` detections' (:func:`shoeseg.inference.detect`). With flip TTA
        (``flip_tta``, default the predictor's) each image also runs mirrored (see :meth:`_forward_flip_tta`),
        and every detection has its mask.
        """
        from shoeseg.inference import detect

        thresh = self.score_thresh if score_thresh is None else float(score_thresh)
        tta = self.flip_tta if flip_tta is None else bool(flip_tta)
        tensors = [image_to_tensor(im, self.device, where=f"image {i}") for i, im in enumerate(images)]
        model, roi_heads = self.model, self.model.roi_heads
        with self._lock, torch.inference_mode(), autocast(self.device):
            saved = roi_heads.score_thresh
            roi_heads.score_thresh = thresh
            try:
                if tta:
                    return self._forward_flip_tta(tensors)
                batch, _ = model.transform(tensors)
                return detect(model, batch, [tuple(t.shape[-2:]) for t in tensors], masks_from)
            finally:
                roi_heads.score_thresh = saved

    def _forward_flip_tta(self, tensors: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Test-time flip augmentation, as detectron2's ``GeneralizedRCNNWithTTA`` does it for Mask R-CNN.

        Each image and its mirror image go through the backbone, the RPN and the box head together; the mirror
        image's detections are flipped back, the union is reduced by the box head's own class-wise NMS and
        detection cap, and each kept box's mask is the mean of the mask head's probabilities on both views.
        """
        from torchvision.ops import batched_nms

        model, rh, n = self.model, self.model.roi_heads, len(tensors)
        original_sizes = [tuple(t.shape[-2:]) for t in tensors]
        batch, _ = model.transform(tensors + [t.flip(-1) for t in tensors])
        sizes = batch.image_sizes
        features = model.backbone(batch.tensors)
        proposals, _ = model.rpn(batch, features)
        box_feats = rh.box_head(rh.box_roi_pool(features, proposals, sizes))
        boxes, scores, labels = rh.postprocess_detections(*rh.box_predictor(box_feats), proposals, sizes)

        def mirror(b: torch.Tensor, width: int) -> torch.Tensor:
            return torch.stack([width - b[:, 2], b[:, 1], width - b[:, 0], b[:, 3]], dim=1)

        kept = []
        for i in range(n):
            both = torch.cat([boxes[i], mirror(boxes[n + i], sizes[n + i][1])])
            both_scores, both_labels = torch.cat([scores[i], scores[n + i]]), torch.cat([labels[i], labels[n + i]])
            keep = batched_nms(both, both_scores, both_labels, rh.nms_thresh)[: rh.detections_per_img]
            kept.append((both[keep], both_scores[keep], both_labels[keep]))
        mask_boxes = [b for b, _, _ in kept] + [mirror(b, sizes[i][1]) for i, (b, _, _) in enumerate(kept)]
        probs = mask_probabilities(rh, features, mask_boxes, [lab for _, _, lab in kept] * 2, sizes)
        results = [{"boxes": b, "scores": sc, "labels": lab, "masks": (probs[i] + probs[n + i].flip(-1)) / 2}
                   for i, (b, sc, lab) in enumerate(kept)]
        return model.transform.postprocess(results, sizes[:n], original_sizes)

    def predict(self, images: Sequence[np.ndarray], *, score_thresh: float | None = None,
                flip_tta: bool | None = None, polygons_from: float | None = None,
                masks_from: float | None = None) -> list[list[Detection]]:
        """Detects shoes in RGB uint8 ``(H, W, 3)`` images.

        Args:
            images: the images; they are run ``batch_size`` at a time.
            score_thresh: overrides the predictor's threshold for this call.
            flip_tta: overrides the predictor's test-time flip augmentation for this call.
            polygons_from: trace polygons only for detections scoring at least this (``None``: every one); the
                others come with no polygon, kept when their mask has ``min_area_px`` pixels. For callers that
                show only the confident ones and score the image with all of them (the prediction pipeline's
                candidates), tracing being most of the cost after the forward pass.
            masks_from: run the mask head only on detections scoring at least this (``None``: every one); the
                others come with ``mask=None`` and no polygon, their box, label and score only. Ignored with
                ``mask_rescore`` (every score needs its mask).

        Returns:
            One list per image of detections, highest score first. Detections whose mask is empty after
            thresholding are left out, and so are those whose score, times their mask's quality
            (``mask_rescore``), falls below the threshold.
        """
        if isinstance(images, np.ndarray) and images.ndim == 3:
            raise TypeError("predict() takes a list of images; wrap a single image in a list")
        thresh = self.score_thresh if score_thresh is None else float(score_thresh)
        if self.mask_rescore:
            masks_from = None
        results: list[list[Detection]] = []
        for start in range(0, len(images), self.batch_size):
            batch = list(images[start : start + self.batch_size])
            outputs = self.forward_raw(batch, score_thresh=thresh, flip_tta=flip_tta, masks_from=masks_from)
            results += self.detections(outputs, batch, polygons_from=polygons_from, min_score=thresh)
        return results

    def detections(self, outputs: Sequence[dict[str, torch.Tensor]], images: Sequence[np.ndarray], *,
                   polygons_from: float | None = None, min_score: float | None = None) -> list[list[Detection]]:
        """:meth:`forward_raw`'s outputs for ``images`` as :meth:`predict` gives them (soft masks refined and
        thresholded, scores rescored, polygons traced): the half of :meth:`predict` after the model, for callers
        that run it beside the next forward pass. ``min_score``: drop what scores below it once rescored (the
        threshold the outputs were asked at)."""
        return [self._to_detections(out, image, polygons_from=polygons_from, min_score=min_score)
                for out, image in zip(outputs, images, strict=True)]

    def _soft_masks(self, out: dict[str, torch.Tensor], image: np.ndarray) -> np.ndarray:
        """The outputs' soft masks ``(K, H, W)`` (float32, the first ``K`` detections'), refined along the image's
        edges when ``mask_refine`` is set."""
        soft = out["masks"][:, 0].float().cpu().numpy()
        if self.mask_refine > 0 and len(soft):
            soft = soft.copy()  # on the CPU the array shares the outputs' memory: they stay as the model gave them
            guide = grey(image)
            for prob, box in zip(soft, out["boxes"][: len(soft)].float().cpu().numpy(), strict=True):
                refine_in_box(guide, prob, box, radius_rel=self.mask_refine, eps=self.mask_refine_eps,
                              thresh=self.mask_thresh)
        return soft

    def _to_detections(self, out: dict[str, torch.Tensor], image: np.ndarray, *,
                       polygons_from: float | None = None, min_score: float | None = None) -> list[Detection]:
        if len(out["scores"]) == 0:
            return []
        height_px, width_px = int(image.shape[0]), int(image.shape[1])
        soft = self._soft_masks(out, image)
        masks: list[np.ndarray | None] = list(soft > self.mask_thresh)
        boxes = out["boxes"].float().cpu().numpy()
        scores = out["scores"].float().cpu().numpy().copy()
        labels = out["labels"].cpu().numpy()
        if self.mask_rescore:
            for i, prob in enumerate(soft):
                scores[i] *= maskness(prob, self.mask_thresh)
        masks += [None] * (len(scores) - len(masks))  # no mask asked for the fainter ones (``masks_from``)
        order = np.argsort(-scores, kind="stable")
        dets = []
        for i in order:
            mask, box, score, label = masks[i], boxes[i], scores[i], labels[i]
            if min_score is not None and score < min_score:
                continue
            if mask is None or (polygons_from is not None and score < polygons_from):
                polygons = ()
                if mask is not None and mask.sum() < self.min_area_px:
                    continue
            else:
                polygons = self._polygons_in_box(mask, box, height_px, width_px)
                if not polygons:
                    continue
            dets.append(Detection(
                label=self.class_names[int(label) - 1],
                score=float(score),
                box_xyxy=tuple(float(v) for v in box),
                mask=mask,
                polygons=polygons,
            ))
        return dets

    def _polygons_in_box(self, mask: np.ndarray, box: np.ndarray, height_px: int, width_px: int) -> tuple[np.ndarray, ...]:
        # Pasted masks may spill a little past their box (torchvision pads the 28x28 mask): crop with a margin.
        x1, y1, x2, y2 = (float(v) for v in box)
        pad = 0.1 * max(x2 - x1, y2 - y1) + 2
        c0, r0 = max(int(math.floor(x1 - pad)), 0), max(int(math.floor(y1 - pad)), 0)
        c1, r1 = min(int(math.ceil(x2 + pad)), width_px), min(int(math.ceil(y2 + pad)), height_px)
        if c1 <= c0 or r1 <= r0:
            return ()
        return mask_to_polygons(mask[r0:r1, c0:c1], tolerance_px=self.tolerance_px, tolerance_rel=self.tolerance_rel,
                                max_vertices=self.max_vertices, min_area_px=self.min_area_px,
                                min_width_px=MIN_PART_WIDTH_PX, offset_xy=(c0, r0))

    # -- one given box --------------------------------------------------------------------------------

    def predict_in_box(self, image: np.ndarray, box_xyxy: Sequence[float]) -> Detection | None:
        """Runs the mask head on a given box (for instance one an annotator drew) and returns its mask.

        The backbone runs once on the image; the box head scores the box, and the mask head of the best
        foreground class gives the mask, pasted into the image at full size. The score is that class's
        probability from the box head (softmax over background and classes) for the box as given; the box
        itself is not regressed.

        Args:
            image: RGB uint8 ``(H, W, 3)``.
            box_xyxy: ``(x1, y1, x2, y2)`` in pixels of ``image``; clipped to the image.

        Returns:
            The detection, or ``None`` when the mask is empty after thresholding.

        Raises:
            ValueError: a box that is not four finite numbers, or has no area inside the image.

        Example:
            >>> det = predictor.predict_in_box(image, (40, 30, 200, 160))  # doctest: +SKIP
        """
        from torchvision.models.detection.roi_heads import paste_masks_in_image

        h, w = int(image.shape[0]), int(image.shape[1])
        try:
            box = [float(v) for v in box_xyxy]
        except (TypeError, ValueError) as e:
            raise ValueError(f"box {box_xyxy!r}: expected four numbers x1, y1, x2, y2") from e
        if len(box) != 4 or not all(math.isfinite(v) for v in box):
            raise ValueError(f"box {box_xyxy!r}: expected four finite numbers x1, y1, x2, y2")
        x1, x2 = sorted((min(max(box[0], 0.0), w), min(max(box[2], 0.0), w)))
        y1, y2 = sorted((min(max(box[1], 0.0), h), min(max(box[3], 0.0), h)))
        if x2 - x1 < 1 or y2 - y1 < 1:
            raise ValueError(f"box {box_xyxy!r} has no area inside the {w}x{h} image")
        model = self.model
        tensor = image_to_tensor(image, self.device)
        with self._lock, torch.inference_mode(), autocast(self.device):
            batch, _ = model.transform([tensor])
            features = model.backbone(batch.tensors)
            rh, rw = batch.image_sizes[0]
            orig = torch.tensor([[x1, y1, x2, y2]], device=self.device)
            scaled = orig * torch.tensor([rw / w, rh / h, rw / w, rh / h], device=self.device)
            rh_ = model.roi_heads
            box_feats = rh_.box_head(rh_.box_roi_pool(features, [scaled], batch.image_sizes))
            class_logits, _ = rh_.box_predictor(box_feats)
            probs = class_logits.float().softmax(-1)[0]
            cls = int(probs[1:].argmax()) + 1
            label = torch.tensor([cls], device=self.device)
            mask_prob = mask_probabilities(rh_, features, [scaled], [label], batch.image_sizes)[0].float()
            pasted = paste_masks_in_image(mask_prob, orig, (h, w))[0, 0].float().cpu().numpy()
        if self.mask_refine > 0:
            refine_in_box(grey(image), pasted, (x1, y1, x2, y2), radius_rel=self.mask_refine, eps=self.mask_refine_eps,
                          thresh=self.mask_thresh)
        mask = pasted > self.mask_thresh
        score = float(probs[cls]) * (maskness(pasted, self.mask_thresh) if self.mask_rescore else 1.0)
        polygons = self._polygons_in_box(mask, np.array([x1, y1, x2, y2]), h, w)
        if not polygons:
            return None
        return Detection(label=self.class_names[cls - 1], score=score, box_xyxy=(x1, y1, x2, y2),
                         mask=mask, polygons=polygons)

    # -- flip consistency -------------------------------------------------------------------------------

    def predict_with_flip(
        self, images: Sequence[np.ndarray], *, score_thresh: float | None = None, polygons_from: float | None = None
    ) -> tuple[list[list[Detection]], list[list[Detection]]]:
        """Predicts on the images and on their mirror images, mapping the latter back.

        For flip-consistency active learning: a model that is sure of a shoe finds the same mask both ways.

        Returns:
            ``(original, flipped_back)``: two lists with one detection list per image; the second holds the
            detections on the horizontally flipped image, mirrored back into the original's frame.

        Example:
            >>> plain, mirrored = predictor.predict_with_flip([image])  # doctest: +SKIP
        """
        # without flip TTA, which would make the two views agree by construction
        both = self.predict(list(images) + mirror_images(images), score_thresh=score_thresh, flip_tta=False,
                            polygons_from=polygons_from)
        n = len(images)
        return both[:n], mirror_back(both[n:], [im.shape[1] for im in images])

    # -- pooled features --------------------------------------------------------------------------------

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Pooled backbone features: one L2-normalised row per image (for diversity-aware active learning).

        Each image runs through the model's resize and the backbone on its own (a batch's padding would change
        the features near the border); every FPN level's feature map is averaged over the image's area (the
        padding to a multiple of 32 left out) and the levels are concatenated. Near-duplicate images get
        nearly the same row.

        Returns:
            A float32 array ``(len(images), levels * channels)``.

        Example:
            >>> predictor.embed([image_a, image_b]).shape  # doctest: +SKIP
            (2, 1280)
        """
        rows: list[np.ndarray] = []
        for i, image in enumerate(images):
            tensor = image_to_tensor(image, self.device, where=f"image {i}")
            with self._lock, torch.inference_mode(), autocast(self.device):
                batched, _ = self.model.transform([tensor])
                features = self.model.backbone(batched.tensors)
                pad_h, pad_w = batched.tensors.shape[-2:]
                h, w = batched.image_sizes[0]
                parts = []
                for f in features.values():
                    fh, fw = f.shape[-2:]
                    crop = f[0, :, : max(1, math.ceil(fh * h / pad_h)), : max(1, math.ceil(fw * w / pad_w))]
                    parts.append(crop.float().mean(dim=(1, 2)))
                v = torch.cat(parts)
                rows.append((v / v.norm().clamp_min(1e-12)).cpu().numpy().astype(np.float32))
        if not rows:
            return np.zeros((0, 0), np.float32)
        return np.stack(rows)
