"""The control plane.

Vocabulary:
- *app*: what the user applied (`App`), stored at `apps/<name>`.
- *instance*: one replica of an app (`Instance`), stored at
  `instances/<app>/<name>`; `desired` says whether it should run, `status`
  is what its node last reported.
- *node*: a registered agent (`Node`); it is *Ready* while its lease key
  `leases/nodes/<name>` exists.
- *snapshot*: a frozen view of all of the above from one etcd read.
- *plan*: the writes one reconcile pass wants, committed in
  revision-checked transactions.

Data flows snapshot → reconcile (what) → placement (where) → commit.
"""
