"""Options shared by every reader and writer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from via_tools.model import DEFAULT_LABEL


@dataclass(frozen=True)
class ReadOptions:
    """How a reader turns a source's regions into labelled instances.

    Args:
        label_attr: the region attribute holding the label (VIA ``region_attributes[label_attr]``).
        default_label: the label of a region that has none (the balloon set has none).
        images_dir: when given, every image must exist there; missing sizes are read from the files.
        allow_outside: YOLO: let a data.yaml's ``path`` / ``train`` / ``val`` / ``test`` name folders outside
            the dataset's folder (an absolute path, ``..``); refused by default, logged and counted when allowed.
    """

    label_attr: str = "label"
    default_label: str = DEFAULT_LABEL
    images_dir: Path | None = None
    allow_outside: bool = False


@dataclass(frozen=True)
class WriteOptions:
    """How a writer lays out its output.

    Args:
        label_attr: the region attribute that receives the label when the source had no attributes.
        from_name / to_name: Label Studio control and object tag names.
    """

    label_attr: str = "label"
    from_name: str = "label"
    to_name: str = "image"
