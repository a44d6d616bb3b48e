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
  progressDeadline: 45s
  readiness:
    http: {port: 8080, path: /healthz}
    periodSeconds: 2s
    timeoutSeconds: 500ms
    initialDelaySeconds: 3s
    failureThreshold: 2
  liveness: {exec: [cat, /tmp/healthy], periodSeconds: 5, failureThreshold: 4, initialDelaySeconds: 1m}
  startup: {tcp: 8080, periodSeconds: 1, failureThreshold: 30}
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
    text = EVERY_FIELD.replace("    http: {port: 8080, path: /healthz}\n", '    exec: ["true"]\n')
    assert text != EVERY_FIELD
    (spec,) = load(tmp_path, text)
    assert load(tmp_path, manifest_yaml(spec)) == [spec]
    (spec,) = load(
        tmp_path, "apiVersion: orch/v1\nkind: App\nmetadata: {name: s}\nspec: {image: busybox, readiness: {tcp: 80}}\n"
    )
    rendered = manifest(spec)["spec"]
    assert rendered["readiness"]["tcp"] == 80  # with the defaults the loader filled in
    assert "env" not in rendered and "hostUsers" not in rendered and "ports" not in rendered
    assert load(tmp_path, yaml.safe_dump(manifest(spec))) == [spec]


def test_probe_defaults_render_and_load_back_the_same(tmp_path: Path) -> None:
    """Liveness and startup get Kubernetes' defaults stored (period 10s, timeout 1s, threshold 3);
    readiness's threshold stays unset (orch's 1), so older specs roll nothing when applied again."""
    head = "apiVersion: orch/v1\nkind: App\nmetadata: {name: s}\nspec:\n  image: busybox\n"
    probes = "  readiness: {tcp: 80}\n  liveness: {http: {port: 80}}\n  startup: {exec: [true]}\n"
    (spec,) = load(tmp_path, head + probes)
    rendered = manifest(spec)["spec"]
    assert rendered["liveness"] == {
        "http": {"port": 80},
        "periodSeconds": "10s",
        "timeoutSeconds": "1s",
        "failureThreshold": 3,
    }
    assert rendered["startup"]["failureThreshold"] == 3 and "initialDelaySeconds" not in rendered["startup"]
    assert "failureThreshold" not in rendered["readiness"]
    assert load(tmp_path, manifest_yaml(spec)) == [spec]
