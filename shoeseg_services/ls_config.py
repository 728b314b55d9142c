"""The labeling config, read through the SDK's ``LabelInterface``, and one small output class per control tag.

A Label Studio labeling config names image objects (``<Image name="image" value="$image"/>``) and controls
that label them (``<PolygonLabels name="label" toName="image">``). Each supported control tag has a class
here that turns the model's detections into that control's result regions:

* :class:`PolygonLabelsControl`: one ``polygonlabels`` region per polygon part, points in percent;
* :class:`RectangleLabelsControl`: one ``rectanglelabels`` box per detection, in percent;
* :class:`BrushLabelsControl`: one ``brushlabels`` mask per detection, Label Studio's RLE
  (``label_studio_sdk.converter.brush.mask2rle``).

Model classes map to a control's labels by exact name, then case-insensitively, then through a label's
``predicted_values`` attribute (comma separated model class names), and finally, when the model has one
class and the control one label, to that label.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from defusedxml import ElementTree
from defusedxml.common import DefusedXmlException

from via_tools.labelstudio import polygon_to_ls_points

log = logging.getLogger(__name__)

MAX_CONFIG_CHARS = 200_000


class LabelConfigError(ValueError):
    """A labeling config the backend cannot serve; the message says what is missing or wrong."""


@dataclass(frozen=True)
class ImageObject:
    """An ``<Image>`` tag: its ``name`` and the task data key its ``value="$key"`` points at."""

    name: str
    value_key: str


@dataclass(frozen=True)
class RegionSource:
    """What a control needs of one detection: label, score, box, mask and polygons, in image pixels."""

    label: str
    score: float
    box_xyxy: tuple[float, float, float, float]
    mask: np.ndarray | None
    polygons: tuple[np.ndarray, ...]


@dataclass(frozen=True)
class ControlModel:
    """One labeling control bound to an image object.

    Args:
        from_name: the control's ``name``.
        to_name: the image object's ``name``.
        labels: the control's label values, in config order.
        predicted_values: label value -> the model class names that map to it (``predicted_values`` attribute).
    """

    tag: ClassVar[str] = ""
    result_type: ClassVar[str] = ""
    needs_mask: ClassVar[bool] = False

    from_name: str
    to_name: str
    labels: tuple[str, ...]
    predicted_values: tuple[tuple[str, tuple[str, ...]], ...] = ()
    _label_maps: dict = field(default_factory=dict, init=False, compare=False, repr=False, hash=False)

    def label_for(self, class_name: str, class_names: Sequence[str]) -> str | None:
        """The control label a model class maps to, or ``None`` when it maps to none."""
        key = tuple(class_names)
        mapping = self._label_maps.get(key)
        if mapping is None:
            mapping = {c: self._map_one(c, key) for c in key}
            self._label_maps[key] = mapping
        if class_name not in mapping:
            return self._map_one(class_name, key)
        return mapping[class_name]

    def _map_one(self, class_name: str, class_names: tuple[str, ...]) -> str | None:
        if class_name in self.labels:
            return class_name
        lowered = {label.lower(): label for label in self.labels}
        if class_name.lower() in lowered:
            return lowered[class_name.lower()]
        for label, values in self.predicted_values:
            if class_name in values or class_name.lower() in (v.lower() for v in values):
                return label
        if len(class_names) == 1 and len(self.labels) == 1:
            return self.labels[0]
        return None

    def unmapped(self, class_names: Sequence[str]) -> list[str]:
        """Model classes that map to none of this control's labels."""
        return [c for c in class_names if self.label_for(c, class_names) is None]

    def results(self, sources: Sequence[RegionSource], *, width_px: int, height_px: int) -> list[dict[str, Any]]:
        """Label Studio result regions for ``sources`` (already mapped to this control's labels)."""
        out: list[dict[str, Any]] = []
        for src in sources:
            for value in self.values(src, width_px=width_px, height_px=height_px):
                out.append(
                    {
                        "id": secrets.token_hex(5),
                        "from_name": self.from_name,
                        "to_name": self.to_name,
                        "type": self.result_type,
                        "original_width": int(width_px),
                        "original_height": int(height_px),
                        "image_rotation": 0,
                        "value": value,
                        "score": round(float(src.score), 4),
                        "readonly": False,
                    }
                )
        return out

    def values(self, src: RegionSource, *, width_px: int, height_px: int) -> list[dict[str, Any]]:
        raise NotImplementedError


@dataclass(frozen=True)
class PolygonLabelsControl(ControlModel):
    """``<PolygonLabels>``: one closed polygon per part of each detection's mask, points in percent.

    Example:
        >>> c = PolygonLabelsControl(from_name="label", to_name="image", labels=("shoe",))
        >>> sq = np.array([[10, 10], [30, 10], [30, 20]], float)
        >>> src = RegionSource("shoe", 0.9, (10, 10, 30, 20), None, (sq,))
        >>> c.results([src], width_px=100, height_px=50)[0]["value"]["points"][1]
        [30.0, 20.0]
    """

    tag: ClassVar[str] = "PolygonLabels"
    result_type: ClassVar[str] = "polygonlabels"

    def values(self, src: RegionSource, *, width_px: int, height_px: int) -> list[dict[str, Any]]:
        out = []
        for poly in src.polygons:
            if len(poly) < 3:
                continue
            points = [[float(x), float(y)] for x, y in polygon_to_ls_points(poly, width_px, height_px)]
            out.append({"points": points, "closed": True, "polygonlabels": [src.label]})
        return out


@dataclass(frozen=True)
class RectangleLabelsControl(ControlModel):
    """``<RectangleLabels>``: each detection's box, in percent of the image size."""

    tag: ClassVar[str] = "RectangleLabels"
    result_type: ClassVar[str] = "rectanglelabels"

    def values(self, src: RegionSource, *, width_px: int, height_px: int) -> list[dict[str, Any]]:
        x0, y0, x1, y1 = (float(v) for v in src.box_xyxy)
        x0, x1 = max(0.0, min(x0, width_px)), max(0.0, min(x1, width_px))
        y0, y1 = max(0.0, min(y0, height_px)), max(0.0, min(y1, height_px))
        if x1 <= x0 or y1 <= y0:
            return []
        return [
            {
                "x": x0 / width_px * 100.0,
                "y": y0 / height_px * 100.0,
                "width": (x1 - x0) / width_px * 100.0,
                "height": (y1 - y0) / height_px * 100.0,
                "rotation": 0,
                "rectanglelabels": [src.label],
            }
        ]


@dataclass(frozen=True)
class BrushLabelsControl(ControlModel):
    """``<BrushLabels>``: each detection's mask in Label Studio's RLE (``format: "rle"``)."""

    tag: ClassVar[str] = "BrushLabels"
    result_type: ClassVar[str] = "brushlabels"
    needs_mask: ClassVar[bool] = True

    def values(self, src: RegionSource, *, width_px: int, height_px: int) -> list[dict[str, Any]]:
        from label_studio_sdk.converter.brush import mask2rle

        if src.mask is None or not src.mask.any():
            return []
        mask = src.mask.astype(np.uint8) * 255
        if mask.shape != (height_px, width_px):  # the model saw the image shrunk: one mask at full size at a time
            from PIL import Image

            mask = np.asarray(Image.fromarray(mask).resize((width_px, height_px), Image.Resampling.NEAREST))
        rle = mask2rle(mask)
        return [{"format": "rle", "rle": [int(v) for v in rle], "brushlabels": [src.label]}]


CONTROL_CLASSES: dict[str, type[ControlModel]] = {
    c.tag: c for c in (PolygonLabelsControl, RectangleLabelsControl, BrushLabelsControl)
}


@dataclass(frozen=True)
class LabelConfig:
    """A parsed labeling config: the image objects and the controls the backend serves.

    Example:
        >>> cfg = parse_label_config(
        ...     '<View><Image name="image" value="$image"/>'
        ...     '<PolygonLabels name="label" toName="image"><Label value="shoe"/></PolygonLabels></View>')
        >>> [c.tag for c in cfg.controls], cfg.images["image"].value_key
        (['PolygonLabels'], 'image')
    """

    images: dict[str, ImageObject]
    controls: tuple[ControlModel, ...]
    digest: str
    ignored_controls: tuple[str, ...] = ()

    def controls_for(self, image_name: str) -> list[ControlModel]:
        return [c for c in self.controls if c.to_name == image_name]

    def polygon_controls(self) -> list[ControlModel]:
        return [c for c in self.controls if isinstance(c, PolygonLabelsControl)]

    def check_classes(self, class_names: Sequence[str]) -> None:
        """Raises :class:`LabelConfigError` when no model class maps to any PolygonLabels label."""
        for control in self.polygon_controls():
            if all(control.label_for(c, class_names) is None for c in class_names):
                raise LabelConfigError(
                    f"the model's classes {list(class_names)} match none of the labels {list(control.labels)} of "
                    f"<PolygonLabels name={control.from_name!r}>: rename a label to a class name, or add "
                    f'predicted_values="{",".join(class_names)}" to the label that should receive them'
                )


def _checked_xml(xml: str) -> None:
    """Refuses what is not a plain XML document before lxml (inside ``LabelInterface``) sees it: no DTD, no entities."""
    if not isinstance(xml, str) or not xml.strip():
        raise LabelConfigError("the labeling config is empty")
    if len(xml) > MAX_CONFIG_CHARS:
        raise LabelConfigError(f"the labeling config is {len(xml)} characters, over {MAX_CONFIG_CHARS}")
    try:
        ElementTree.fromstring(xml, forbid_dtd=True)
    except (ElementTree.ParseError, DefusedXmlException, ValueError) as e:
        raise LabelConfigError(f"the labeling config is not valid XML ({e})") from e


def parse_label_config(xml: str) -> LabelConfig:
    """Parses a Label Studio labeling config (with the SDK's ``LabelInterface``) and checks it can be served.

    Raises:
        LabelConfigError: not XML (or holding a DTD), no ``<Image>``, or no ``<PolygonLabels>`` bound to an image.
    """
    from label_studio_sdk.label_interface import LabelInterface

    _checked_xml(xml)
    try:
        interface = LabelInterface(xml)
    except Exception as e:  # noqa: BLE001 - the SDK raises several kinds for a config it cannot read
        raise LabelConfigError(f"the labeling config cannot be read ({type(e).__name__}: {e})") from e
    images: dict[str, ImageObject] = {}
    for obj in interface.objects:
        value = str(obj.value or "")
        if obj.tag == "Image" and obj.name and value.startswith("$") and len(value) > 1:
            images[obj.name] = ImageObject(name=obj.name, value_key=value[1:])
    if not images:
        raise LabelConfigError('the labeling config has no <Image name=... value="$..."> tag')
    controls: list[ControlModel] = []
    ignored: list[str] = []
    for ctl in interface.controls:
        tag, name, to_names = ctl.tag, ctl.name, list(ctl.to_name or [])
        if tag not in CONTROL_CLASSES:
            if tag.endswith("Labels") and to_names:
                ignored.append(f"{tag} {name!r}")
            continue
        if not name or not to_names:
            raise LabelConfigError(f"<{tag}> needs both name and toName attributes")
        to_name = to_names[0].strip()
        if to_name not in images:
            ignored.append(f"{tag} {name!r} (toName {to_name!r} is not an <Image>)")
            continue
        labels = tuple(str(v) for v in (ctl.labels or []))
        if not labels:
            raise LabelConfigError(f"<{tag} name={name!r}> has no <Label value=...> children")
        predicted = []
        for value, attrs in (getattr(ctl, "labels_attrs", None) or {}).items():
            pv = (getattr(attrs, "attr", attrs) or {}).get("predicted_values")
            if pv:
                predicted.append((str(value), tuple(v.strip() for v in str(pv).split(",") if v.strip())))
        controls.append(CONTROL_CLASSES[tag](from_name=name, to_name=to_name, labels=labels,
                                             predicted_values=tuple(predicted)))
    if not any(isinstance(c, PolygonLabelsControl) for c in controls):
        raise LabelConfigError(
            "the labeling config has no <PolygonLabels> control bound to an <Image>; add for example "
            '<PolygonLabels name="label" toName="image"><Label value="shoe"/></PolygonLabels>'
        )
    return LabelConfig(
        images=images,
        controls=tuple(controls),
        digest=hashlib.sha256(xml.encode()).hexdigest()[:16],
        ignored_controls=tuple(ignored),
    )


def polygon_control(xml: str, *, where: str = "the project") -> tuple[str, str, list[str]]:
    """``(from_name, to_name, labels)`` of the first ``<PolygonLabels>`` of a labeling config.

    Raises:
        LabelConfigError: the config cannot be read or has no PolygonLabels bound to an image; names ``where``.

    Example:
        >>> polygon_control('<View><Image name="img" value="$image"/>'
        ...                 '<PolygonLabels name="shoes" toName="img"><Label value="shoe"/></PolygonLabels></View>')
        ('shoes', 'img', ['shoe'])
    """
    try:
        control = parse_label_config(xml).polygon_controls()[0]
    except LabelConfigError as e:
        raise LabelConfigError(f"{where}: {e}") from e
    return control.from_name, control.to_name, list(control.labels)


@functools.lru_cache(maxsize=64)
def cached_label_config(xml: str) -> LabelConfig:
    """:func:`parse_label_config`, once per distinct XML (``/setup`` and every ``/predict`` send the config)."""
    return parse_label_config(xml)
