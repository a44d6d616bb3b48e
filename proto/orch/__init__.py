"""orch's shared package: the generated API (`orch.v1`) and the few helpers
that both the scheduler and the node agent need (quantities, validation,
logging). Nothing here talks to etcd or to the kernel."""
