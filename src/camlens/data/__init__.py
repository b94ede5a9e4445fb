"""Datasets and image reading.

- ``images``: reading untrusted image files (``load_image``, ``ImageError``), expanding paths and globs.
- ``builtin``: the built-in, procedurally generated localization dataset (``BuiltinDataset``).
- ``stl10``: STL-10 from its binary files (``STL10``, ``read_split``).
- ``folder``: ImageFolder trees (``folder_splits``).
- ``annotations``: localization ground truth (Choe et al.'s metadata, VOC/ImageNet XML, CUB-200-2011).
- ``source``: the one reading of a ``--data`` string (``resolve_data``).
- ``samples``: images with their labels and ground truth for evaluation and training (``dataset_samples``).
"""
