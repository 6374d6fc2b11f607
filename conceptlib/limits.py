"""Every bound conceptlib puts on input it did not make, in one place (docs/security.md lists them).

A file, a registry row or an argument from someone else is checked against these before anything is
allocated for it: a small file must not make the process large, and a number must not reach a library
that fails on it with a traceback. Each bound sits far above what conceptlib itself ever writes.
"""

from __future__ import annotations

# ------------------------------------------------------------------ .cpt files (zip)
MAX_ZIP_ENTRIES = 1024
"""Members of a concept file: a manifest and one weights file per version."""
MAX_CENTRAL_DIRECTORY_BYTES = 1 << 20
"""A zip's directory (about 100 bytes per member): the zip reader holds one object per entry in it."""
MAX_MANIFEST_BYTES = 1 << 20
"""``manifest.json``: a few kB per version."""
MAX_VERSIONS = 256
"""Versions in one file (the exported one and its whole lineage)."""
MAX_WEIGHTS_BYTES = 512 << 20
"""One version's safetensors entry, uncompressed (the largest first-party network, paper128, is 167 MB)."""
MAX_FILE_WEIGHTS_BYTES = 1 << 30
"""All weights entries of one file together, uncompressed."""

# ------------------------------------------------------------------ safetensors and JSON
MAX_HEADER_BYTES = 1 << 20
"""A safetensors JSON header (the default networks': about 10 kB)."""
MAX_TENSORS = 4096
"""Tensors in one safetensors file."""
MAX_JSON_DEPTH = 32
"""Nesting of any JSON document read from outside (conceptlib writes at most 6 levels)."""
MAX_CHECKPOINT_JSON_BYTES = 64 << 20
"""``checkpoint.json``: its history grows by one small record per iteration."""
MAX_CHECKPOINT_BYTES = 8 << 30
"""A checkpoint's tensors file (weights, Adam moments, replay buffer)."""
MAX_ITERATIONS = 10**9

# ------------------------------------------------------------------ versions and architectures
MAX_IMAGE_SIZE = 1024
"""A version's ``image_size`` (the first-party sources go up to 128)."""
MAX_CONFIG_BYTES = 4096
"""An architecture config as JSON (the defaults take about 120 bytes)."""
MAX_SEED = 2**31 - 1
"""Seeds are stored in an INTEGER column (32 bits on PostgreSQL) and handed to numpy and torch."""

# ------------------------------------------------------------------ sampling and images
MAX_WEIGHT = 1000.0
"""The largest weight in an expression (``w*term``); the paper's are 0.01-1."""
MAX_HELD_IMAGES_BYTES = 2 << 30
"""Images ``concept compose`` holds before writing them (its ``-n`` times 3 x image_size^2 bytes)."""
MAX_DATASET_BYTES = 4 << 30
"""Images a dataset source renders into memory (``n`` x 3 x image_size^2 bytes)."""
MAX_BATCH_SIZE = 65536
MAX_IMAGE_PIXELS = 4096 * 4096
"""Pixels of an image file read by ``concept infer``, checked from its header before decoding."""
