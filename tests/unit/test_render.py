"""cli/render.py: a spec back into a manifest that loads into the same spec."""

from __future__ import annotations

from pathlib import Path

import yaml

from cli.manifest import _SPEC, load_manifests
from cli.render import manifest, manifest_yaml

EVERY_FIELD = """\
apiVersion: orch/v1
kind: App
metadata:
  name: full
  labels: {team: web, tier: front}
spec:
  replicas: 4
  image: registry.example/web@sha256:%s
  command: [/bin/server]
  args: [--port, "8080"]
  env: {MODE: prod, EMPTY: ""}
  resources: {cpu: 250m, memory: 64Mi, pids: 100}
  ports:
    - {name: http, containerPort: 8080, hostPort: 18080, protocol: tcp}
    - {containerPort: 53, protocol: udp}
  restartPolicy: OnFailure
  nodeSelector: {disk: ssd}
  antiAffinity: [full]
  placement: binpack
  update: {maxSurge: 2, maxUnavailable: 1}
  readiness: {http: {port: 8080, path: /healthz}, periodSeconds: 2s, timeoutSeconds: 500ms}
  stopGracePeriod: 1m30s
  user: "1000:1000"
  workingDir: /srv
  readOnlyRootFilesystem: true
  hostUsers: false
  capabilities: {add: [NET_BIND_SERVICE], drop: [MKNOD]}
  seccomp: unconfined
  service: {port: 80, targetPort: 8080, protocol: udp}
  onNodeLost: Stop
  init: true
  volumes:
    - {name: cache, emptyDir: {}}
    - {name: scratch, emptyDir: {medium: Memory, sizeLimit: 64Mi}}
    - {name: data, hostPath: {path: /srv/data/web, type: DirectoryOrCreate}}
    - {name: conf, hostPath: {path: /srv/conf}}
  volumeMounts:
    - {name: cache, mountPath: /var/cache/app}
    - {name: scratch, mountPath: /scratch}
    - {name: data, mountPath: /data, readOnly: true}
""" % ("a" * 64)


def load(tmp_path: Path, text: str) -> list:
    path = tmp_path / "app.yaml"
    path.write_text(text)
    return [a.spec for a in load_manifests([path])]


def test_every_field_survives_the_round_trip(tmp_path: Path) -> None:
    (spec,) = load(tmp_path, EVERY_FIELD)
    (again,) = load(tmp_path, manifest_yaml(spec))
    assert again == spec


def test_every_manifest_field_is_rendered(tmp_path: Path) -> None:
    """A field added to the manifest (manifest.py's _SPEC) must be added here too."""
    (spec,) = load(tmp_path, EVERY_FIELD)
    assert set(manifest(spec)["spec"]) == set(_SPEC)


def test_exec_and_tcp_probes_and_defaults_left_out(tmp_path: Path) -> None:
    text = EVERY_FIELD.replace("{http: {port: 8080, path: /healthz}, ", "{exec: [true], ")
    (spec,) = load(tmp_path, text)
    assert load(tmp_path, manifest_yaml(spec)) == [spec]
    (spec,) = load(
        tmp_path, "apiVersion: orch/v1\nkind: App\nmetadata: {name: s}\nspec: {image: busybox, readiness: {tcp: 80}}\n"
    )
    rendered = manifest(spec)["spec"]
    assert rendered["readiness"]["tcp"] == 80  # with the defaults the loader filled in
    assert "env" not in rendered and "hostUsers" not in rendered and "ports" not in rendered
    assert load(tmp_path, yaml.safe_dump(manifest(spec))) == [spec]
