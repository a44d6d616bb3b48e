"""Timestamps between float seconds (what decisions take as `now`) and protobuf."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp


def ts(now: float) -> Timestamp:
    t = Timestamp()
    t.FromNanoseconds(int(now * 1e9))
    return t


def seconds(t: Timestamp) -> float:
    return float(t.ToNanoseconds()) / 1e9
