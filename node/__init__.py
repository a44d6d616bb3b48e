"""The node agent.

Vocabulary:
- *desired set*: every instance the scheduler wants on this node, sent
  whole with a generation number;
- *worker*: one asyncio task per instance that drives its container through
  start → run → (restart) → stop;
- *runtime*: `node.runtime`, which turns a ContainerConfig into a running
  Linux container and back;
- *network*: `node.network`, the node's bridge and each container's veth.

The agent converges actual to desired by `reconcile.diff`, applied in the
order removed → added; workers own everything about one instance.
"""
