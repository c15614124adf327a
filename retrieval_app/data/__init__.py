"""Folder scanning, image decoding, train/validation splits and the image dataset.

(`sampler.py` and `triplets.py` are imported from their modules directly.)"""

from .dataset import BadSample, Batch, ImageDataset, collate_skip_bad
from .decode import MAX_PIXELS, check_image_file, load_image, to_rgb
from .scan import IMAGE_EXTENSIONS, ImageRecord, ScanResult, SkippedFile, scan_folder
from .split import Split, split_records

__all__ = [
    "BadSample",
    "Batch",
    "IMAGE_EXTENSIONS",
    "ImageDataset",
    "ImageRecord",
    "MAX_PIXELS",
    "ScanResult",
    "SkippedFile",
    "Split",
    "check_image_file",
    "collate_skip_bad",
    "load_image",
    "scan_folder",
    "split_records",
    "to_rgb",
]
