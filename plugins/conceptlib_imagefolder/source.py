"""The ``imagefolder`` dataset source: a local folder of images and an attribute table (e.g. CelebA).

Decoded, cropped and resized arrays are kept in the dataset cache (:mod:`conceptlib.datacache`). The
hash covers the params (all but ``root``, so a moved copy of the same folder keeps its hash), the
table file's size and time, and every used image's name, size and time: it changes whenever a file
that fed the dataset could have changed, without reading the images to find out.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from conceptlib.datacache import cached_dataset
from conceptlib.errors import SourceError, SourceParamError
from conceptlib.params import image_count, integer, split_names
from conceptlib.schema import ConditionSchema
from conceptlib.sources import Dataset, Progress, Source, canonical_hash
from conceptlib_imagefolder.images import read_images
from conceptlib_imagefolder.tables import LAYOUTS, Table, detect_layout, name, read_table

READER_VERSION = 1
"""Bump on any change to decoding, cropping or resizing: it enters every dataset hash."""
CELEBA_CROP = 140
"""CelebA's default centre crop: the face in a 178x218 aligned image (Du & Mordatch's preprocessing)."""
IMAGE_SIZES = (16, 256)


class ImageFolderSource(Source):
    """Images plus an attribute table, in CelebA's own layout or ``images/`` + ``labels.csv``."""

    name = "imagefolder"
    description = (
        "Local images plus an attribute table: CelebA's img_align_celeba/ + list_attr_celeba.txt (each "
        "attribute no/yes), or images/ + labels.csv (numbers continuous, text categorical); --param root=DIR."
    )
    default_params: Mapping[str, Any] = {
        "root": "",
        "layout": "auto",
        "image_size": 64,
        "crop": 0,
        "n": 0,
        "attributes": "",
    }

    def resolve_params(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Defaults overlaid with ``given``, checked against the folder, in canonical form.

        ``root`` becomes absolute, ``layout`` concrete, ``crop`` 0 becomes the layout's default (CelebA:
        140, others: the largest centred square, kept as 0) and ``attributes`` the table's spelling.
        """
        params = super().resolve_params(given)
        if not isinstance(params["root"], str) or not params["root"]:
            raise SourceParamError(
                f"source {self.name!r} needs --param root=DIR, a folder with "
                + " or ".join(f"{folder}/ + {table}" for folder, table in LAYOUTS.values())
            )
        root = Path(params["root"]).expanduser().resolve()
        if not root.is_dir():
            raise SourceParamError(f"source {self.name!r}: root {root} is not a directory")
        params["root"] = str(root)
        if params["layout"] == "auto":
            params["layout"] = detect_layout(root)
        if params["layout"] not in LAYOUTS:
            raise SourceParamError(
                f"source {self.name!r}: layout must be auto, {', '.join(LAYOUTS)}; got {params['layout']!r}"
            )
        params["image_size"] = integer(self.name, params, "image_size", *IMAGE_SIZES)
        params["crop"] = integer(self.name, params, "crop", 0)
        if params["crop"] == 0 and params["layout"] == "celeba":
            params["crop"] = CELEBA_CROP
        params["n"] = image_count(self.name, params, 0)
        params["attributes"] = self._attributes(params, self._table(params))
        return params

    def attributes(self, params: Mapping[str, Any]) -> dict[str, ConditionSchema]:
        """The schema of each chosen column; continuous ranges span the whole table, whatever ``n``."""
        resolved = self.resolve_params(params)
        schemas = self._table(resolved).schemas
        return {a: schemas[a] for a in resolved["attributes"].split(",")}

    def dataset_hash(self, params: Mapping[str, Any]) -> str:
        """Hash of the params (less ``root``), the table file's stat and every used image's stat."""
        resolved = self.resolve_params(params)
        return self._hash(resolved, self._table(resolved))

    def load(self, params: Mapping[str, Any], progress: Progress | None = None) -> Dataset:
        """The cached arrays for these files and params, else the images decoded and cached."""
        resolved = self.resolve_params(params)
        table = self._table(resolved)
        digest = self._hash(resolved, table)
        chosen = resolved["attributes"].split(",")
        count = self._count(resolved, table)

        def build() -> Dataset:
            paths = [table.image_dir / f for f in table.files[:count]]
            images = read_images(paths, resolved["image_size"], resolved["crop"], progress)
            labels = {a: table.labels[a][:count] for a in chosen}
            return Dataset(images, labels, {a: table.schemas[a] for a in chosen}, digest)

        return cached_dataset(self.name, digest, build, progress)

    def _table(self, params: Mapping[str, Any]) -> Table:
        return read_table(Path(params["root"]), params["layout"])

    def _count(self, params: Mapping[str, Any], table: Table) -> int:
        """Images used: the first ``n`` rows of the table, or all of them for ``n=0``."""
        if not table.files:
            raise SourceError(f"{table.path} lists no images")
        return min(params["n"] or len(table.files), len(table.files))

    def _hash(self, params: Mapping[str, Any], table: Table) -> str:
        files = hashlib.sha256()
        for file in table.files[: self._count(params, table)]:
            path = table.image_dir / file
            try:
                stat = path.stat()
            except OSError:
                raise SourceError(f"image {path} is listed in {table.path.name} but missing") from None
            files.update(f"{file}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
        stat = table.path.stat()
        return canonical_hash({
            "source": self.name,
            "reader": READER_VERSION,
            **{k: v for k, v in params.items() if k != "root"},
            "table": [table.path.name, stat.st_size, stat.st_mtime_ns],
            "files": files.hexdigest(),
        })

    def _attributes(self, params: Mapping[str, Any], table: Table) -> str:
        """The chosen columns in table order (all for ``""``); an unknown one names the columns there are."""
        value = params["attributes"]
        if not isinstance(value, str):
            raise SourceParamError(f"source {self.name!r}: attributes must be comma-separated names; got {value!r}")
        known = list(table.schemas)
        if not known:
            raise SourceError(f"{table.path} has no attribute columns besides the file names")
        asked = [name(a) for a in split_names(value)]
        unknown = [a for a in asked if a not in known]
        if unknown:
            raise SourceParamError(
                f"source {self.name!r}: {table.path.name} has no attribute {unknown[0]!r} "
                f"(it has: {', '.join(known)})"
            )
        return ",".join(a for a in known if not asked or a in asked)

