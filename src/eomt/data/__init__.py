"""Datasets: where files lie, what a dataset yields, and the readers built on it.

sources.py (a folder, a zip, a zip inside a zip) -> base.py (`SegmentationDataset`: items, targets,
the per-image checks) -> the generic readers coco_json.py (COCO panoptic / instance JSON) and
semantic_png.py (label PNGs through a lookup table) -> thin constructors: coco.py, ade20k.py and
cityscapes.py (the official archives), user.py (users' own files), synthetic.py (drawn scenes).
registry.py builds any of them by format name; transforms.py and colour.py are the training
augmentation; check.py validates a dataset; export.py writes synthetic scenes in the user formats.
"""
