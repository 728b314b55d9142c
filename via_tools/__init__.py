"""Data in and out: VIA 1.x / 2.x / 3.x JSON and CSV, COCO, Label Studio and YOLO segmentation, through one canonical model."""

from via_tools.errors import AnnotationError
from via_tools.model import DEFAULT_LABEL, AnnotationSet, ImageRecord, Region

__all__ = ["AnnotationError", "AnnotationSet", "ImageRecord", "Region", "DEFAULT_LABEL"]
