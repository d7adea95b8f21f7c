#!/usr/bin/env python3
"""Lints and renders a Helm chart through helm-sdkpy (Helm v4's engine as a library).

Used by scripts/check-deploy when no `helm` binary is on the PATH.

helm-sdkpy exposes lint (chart defaults only) and install, but no `helm template`.
So:

* lint with values: a scratch copy of the chart whose values.yaml is the chart's
  defaults merged with the values file, as `helm lint -f FILE` merges them;
* render: a real `install` (no wait) against a throwaway in-process stand-in for the
  Kubernetes API on 127.0.0.1, which answers discovery, stores what Helm creates and
  reports Jobs as complete. The release Helm returns carries the rendered manifest
  and hooks, which are printed as one multi-document YAML stream, like `helm template`.

Usage:
  helm_render.py lint CHART [VALUES]
  helm_render.py template CHART RELEASE [VALUES]
Exit status 0 on success, 1 with the reasons on stderr otherwise.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import shutil
import sys
import tempfile
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import yaml

# Resource types the stand-in API serves: group/version -> [(plural, kind, namespaced)].
API_RESOURCES: dict[str, list[tuple[str, str, bool]]] = {
    "v1": [
        ("configmaps", "ConfigMap", True),
        ("secrets", "Secret", True),
        ("services", "Service", True),
        ("serviceaccounts", "ServiceAccount", True),
        ("persistentvolumeclaims", "PersistentVolumeClaim", True),
        ("pods", "Pod", True),
        ("namespaces", "Namespace", False),
    ],
    "apps/v1": [
        ("deployments", "Deployment", True),
        ("statefulsets", "StatefulSet", True),
        ("daemonsets", "DaemonSet", True),
    ],
    "batch/v1": [("jobs", "Job", True), ("cronjobs", "CronJob", True)],
    "policy/v1": [("poddisruptionbudgets", "PodDisruptionBudget", True)],
    "networking.k8s.io/v1": [("networkpolicies", "NetworkPolicy", True)],
    "monitoring.coreos.com/v1": [
        ("servicemonitors", "ServiceMonitor", True),
        ("podmonitors", "PodMonitor", True),
        ("prometheusrules", "PrometheusRule", True),
    ],
}


def kind_of(gv: str, plural: str) -> str:
    """The kind served under a group/version and plural, or "Unknown"."""
    return next((k for p, k, _ in API_RESOURCES.get(gv, []) if p == plural), "Unknown")


class StubApi(BaseHTTPRequestHandler):
    """Just enough of the Kubernetes API for `helm install --wait=false`."""

    objects: dict[str, dict] = {}
    lock = threading.Lock()

    def log_message(self, *_args) -> None:  # keep the check's output clean
        pass

    def _send(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _status(self, code: int, reason: str, message: str) -> None:
        self._send(code, {"kind": "Status", "apiVersion": "v1", "metadata": {},
                          "status": "Failure" if code >= 400 else "Success",
                          "reason": reason, "message": message, "code": code})

    def _route(self):
        """Splits the path into (group/version, plural, namespace, name) or a discovery answer."""
        parts = [p for p in urlsplit(self.path).path.split("/") if p]
        if parts[:1] == ["api"]:
            gv, rest = (parts[1] if len(parts) > 1 else None), parts[2:]
        elif parts[:1] == ["apis"]:
            gv = "/".join(parts[1:3]) if len(parts) > 2 else None
            rest = parts[3:]
        else:
            return None
        namespace = None
        if rest[:1] == ["namespaces"] and len(rest) >= 3:
            namespace, rest = rest[1], rest[2:]
        plural = rest[0] if rest else None
        name = rest[1] if len(rest) > 1 else None
        return gv, plural, namespace, name

    def _discovery(self) -> bool:
        path = urlsplit(self.path).path.rstrip("/")
        if path == "/openapi/v2":
            # Helm validates hook manifests against the server's OpenAPI v2 document.
            # An empty document (the protobuf encoding of an empty message is zero
            # bytes) has no schema for any kind, and kinds without a schema are not
            # validated: the real checks are the chart's own lint, values schema and
            # what check-deploy asserts on the rendered manifests.
            self.send_response(200)
            self.send_header("Content-Type",
                             "application/com.github.proto-openapi.spec.v2.v1.0+protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/version":
            self._send(200, {"major": "1", "minor": "33", "gitVersion": "v1.33.0",
                             "platform": "linux/amd64"})
        elif path == "/api":
            self._send(200, {"kind": "APIVersions", "versions": ["v1"],
                             "serverAddressByClientCIDRs": []})
        elif path == "/apis":
            groups = {}
            for gv in API_RESOURCES:
                if "/" in gv:
                    group, version = gv.split("/")
                    groups.setdefault(group, []).append(version)
            self._send(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v} for v in vs],
                 "preferredVersion": {"groupVersion": f"{g}/{vs[0]}", "version": vs[0]}}
                for g, vs in groups.items()]})
        else:
            gv = path.removeprefix("/api/").removeprefix("/apis/")
            if gv not in API_RESOURCES or path.count("/") > (2 if path.startswith("/api/") else 3):
                return False
            self._send(200, {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
                             "resources": [{"name": p, "singularName": k.lower(), "kind": k,
                                            "namespaced": ns, "verbs": ["create", "delete", "get",
                                            "list", "patch", "update", "watch"]}
                                           for p, k, ns in API_RESOURCES[gv]]})
        return True

    def _key(self, gv, plural, namespace, name) -> str:
        return f"{gv}|{plural}|{namespace}|{name}"

    def _body(self, kind: str) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(length)
        if "protobuf" in (self.headers.get("Content-Type") or ""):
            # Only Helm's release record (a Secret, through the typed client) comes as
            # protobuf. Nothing reads it back in a single install, so a stand-in with
            # a fresh name is enough; the reply is JSON, which the client also accepts.
            return {"kind": kind, "apiVersion": "v1",
                    "metadata": {"name": f"protobuf-{uuid.uuid4()}"}}
        return json.loads(data or b"{}")

    def do_GET(self) -> None:
        if self._discovery():
            return
        route = self._route()
        if route is None or route[1] is None:
            return self._status(404, "NotFound", "no such path")
        gv, plural, namespace, name = route
        if name is None:
            if "watch=" in self.path:
                # An empty stream: watchers re-list, and the list already says "complete".
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            prefix = self._key(gv, plural, namespace, "")
            with self.lock:
                items = [o for k, o in self.objects.items() if k.startswith(prefix)]
            kind = kind_of(gv, plural)
            return self._send(200, {"kind": f"{kind}List", "apiVersion": gv,
                                    "metadata": {"resourceVersion": "1"}, "items": items})
        with self.lock:
            obj = self.objects.get(self._key(gv, plural, namespace, name))
        if obj is None:
            return self._status(404, "NotFound", f'{plural} "{name}" not found')
        self._send(200, obj)

    def do_POST(self) -> None:
        route = self._route()
        if route is None or route[1] is None:
            return self._status(404, "NotFound", "no such path")
        gv, plural, namespace, _ = route
        obj = self._body(kind_of(gv, plural))
        meta = obj.setdefault("metadata", {})
        meta.setdefault("namespace", namespace)
        meta.update(uid=str(uuid.uuid4()), resourceVersion="1", generation=1,
                    creationTimestamp="2026-01-01T00:00:00Z")
        if obj.get("kind") == "Job":
            # Hooks are Jobs; Helm waits for them to complete.
            obj["status"] = {"succeeded": 1, "conditions": [
                {"type": "Complete", "status": "True"}]}
        key = self._key(gv, plural, namespace, meta.get("name"))
        with self.lock:
            if key in self.objects:
                return self._status(409, "AlreadyExists", "already exists")
            self.objects[key] = obj
        self._send(201, obj)

    def do_PUT(self) -> None:
        route = self._route()
        if route is None or route[3] is None:
            return self._status(404, "NotFound", "no such path")
        gv, plural, namespace, name = route
        obj = self._body(kind_of(gv, plural))
        with self.lock:
            self.objects[self._key(gv, plural, namespace, name)] = obj
        self._send(200, obj)

    def do_PATCH(self) -> None:
        self.do_GET()

    def do_DELETE(self) -> None:
        route = self._route()
        if route is None or route[3] is None:
            return self._status(404, "NotFound", "no such path")
        gv, plural, namespace, name = route
        with self.lock:
            obj = self.objects.pop(self._key(gv, plural, namespace, name), None)
        if obj is None:
            return self._status(404, "NotFound", f'{plural} "{name}" not found')
        self._status(200, "", "deleted")


def merge(base: dict, override: dict) -> dict:
    """Merges values the way Helm coalesces a values file over the chart's defaults."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_yaml(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


SEVERITY = {1: "INFO", 2: "WARNING", 3: "ERROR"}


def lint(chart: str, values_file: str | None) -> int:
    """`helm lint --strict [-f values_file]`: fails on warnings and errors."""
    import helm_sdkpy  # only this backend needs it; check_chart.py imports merge()

    with tempfile.TemporaryDirectory() as scratch:
        target = chart
        if values_file:
            target = os.path.join(scratch, os.path.basename(os.path.abspath(chart)))
            shutil.copytree(chart, target)
            merged = merge(load_yaml(os.path.join(chart, "values.yaml")), load_yaml(values_file))
            with open(os.path.join(target, "values.yaml"), "w", encoding="utf-8") as f:
                yaml.safe_dump(merged, f, sort_keys=False)
        # Lint needs no cluster; the configuration only has to exist.
        config = helm_sdkpy.Configuration(namespace="default",
                                          kubeconfig=os.path.join(scratch, "no-kubeconfig"))
        result = asyncio.run(helm_sdkpy.Lint(config).run(target))
    failed = False
    for message in result.get("Messages") or []:
        severity = message.get("Severity", 0)
        # The library serialises Go errors as {}: only severity and file survive.
        # check-deploy renders the same values next, which reports the reason.
        print(f"[{SEVERITY.get(severity, severity)}] {message.get('Path')}", file=sys.stderr)
        failed |= severity >= 2
    return 1 if failed else 0


def template(chart: str, release: str, values_file: str | None) -> int:
    """`helm template`: the manifests and hooks of an install, as one YAML stream."""
    import helm_sdkpy

    server = ThreadingHTTPServer(("127.0.0.1", 0), StubApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        kubeconfig = yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "stub",
            "clusters": [{"name": "stub", "cluster": {
                "server": f"http://127.0.0.1:{server.server_address[1]}"}}],
            "contexts": [{"name": "stub", "context": {"cluster": "stub", "user": "stub",
                                                      "namespace": "default"}}],
            "users": [{"name": "stub", "user": {}}],
        })
        config = helm_sdkpy.Configuration(namespace="default", kubeconfig=kubeconfig)
        values = load_yaml(values_file) if values_file else None
        try:
            rel = asyncio.run(helm_sdkpy.Install(config).run(
                release, os.path.abspath(chart), values=values, wait=False, timeout=60))
        except helm_sdkpy.HelmError as err:
            print(f"helm template failed: {err}", file=sys.stderr)
            return 1
    finally:
        server.shutdown()
    out = [rel.get("manifest") or ""]
    for hook in rel.get("hooks") or []:
        out.append(f"---\n# Source: {hook.get('path')}\n{hook.get('manifest')}")
    sys.stdout.write("\n".join(out))
    return 0


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "lint":
        return lint(argv[1], argv[2] if len(argv) > 2 else None)
    if len(argv) >= 3 and argv[0] == "template":
        return template(argv[1], argv[2], argv[3] if len(argv) > 3 else None)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
