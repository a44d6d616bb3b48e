"""`image:` strings on the node: the shared grammar (orch/imageref.py), its error an ImageError."""

from __future__ import annotations

from node.images.errors import InvalidReference
from orch.imageref import DOCKER_HUB, BadReference, Reference
from orch.imageref import parse_reference as _parse

__all__ = ["DOCKER_HUB", "Reference", "parse_reference"]


def parse_reference(image: str) -> Reference:
    """Parse and normalise `image`; raise InvalidReference with the reason."""
    try:
        return _parse(image)
    except BadReference as e:
        raise InvalidReference(str(e)) from None
