"""ShoeSeg core: Mask R-CNN R50-FPN for shoe instance segmentation."""

__version__ = "0.1.0"
