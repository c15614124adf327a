"""Folder scanning, decoding, splits and datasets."""

from .dataset import BadSample, Batch, ImageDataset, collate_skip_bad
from .decode import load_image, to_rgb
from .scan import IMAGE_EXTENSIONS, ImageRecord, ScanResult, SkippedFile, scan_folder
from .split import Split, split_records

__all__ = [
    "BadSample", "Batch", "IMAGE_EXTENSIONS", "ImageDataset", "ImageRecord", "ScanResult", "SkippedFile",
    "Split", "collate_skip_bad", "load_image", "scan_folder", "split_records", "to_rgb",
]
