"""Where instances go: filters reject nodes, scores rank the rest.

`pipeline.place` runs both over `NodeView`s built from a snapshot;
`pipeline.place_all` places a pass's pending instances and records each
placement on its view, so one pass never overcommits.
"""

from scheduler.placement.nodes import NodeView, node_views
from scheduler.placement.pipeline import Placement, Unschedulable, place, place_all
from scheduler.placement.request import Request, request_for

__all__ = ["NodeView", "Placement", "Request", "Unschedulable", "node_views", "place", "place_all", "request_for"]
