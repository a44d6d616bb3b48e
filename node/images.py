"""Where an instance's root filesystem comes from.

Today only `rootfs:/abs/dir` (a plain directory, used read-only as the
overlay's lower layer). The images issue plugs the OCI store in here.
"""

from __future__ import annotations

from pathlib import Path


class ImageError(ValueError):
    """The image reference cannot be turned into a root filesystem."""


def rootfs_for(image: str) -> Path:
    scheme, sep, rest = image.partition(":")
    if sep and scheme == "rootfs":
        path = Path(rest)
        if not path.is_absolute():
            raise ImageError(f'image "{image}": rootfs path must be absolute')
        if not path.is_dir():
            raise ImageError(f'image "{image}": {path} is not a directory')
        return path
    raise ImageError(f'image "{image}": only rootfs:/dir images are supported by this agent yet')
