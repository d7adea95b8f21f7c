#!/usr/bin/env python3
"""Checks the Helm chart helm/compartment-auditd; run by scripts/check-deploy.

For the default values, every values file in ci/, the alert-test values and the
example parent chart that includes the sidecar:
  * `helm lint --strict` (warnings fail too),
  * the merged values validate against values.schema.json (jsonschema, draft 7),
  * `helm template` renders, the output parses as YAML, and the manifests keep what
    the chart promises (non-root, read-only root, no capabilities, seccomp, probes,
    HTTP on 0.0.0.0, database URL from a Secret, sink volume, native sidecar, ...).
Every file in helm/tests/invalid-values/ must FAIL: schema violations in lint,
template and jsonschema alike; chart-logic errors in template with their message.
The PrometheusRule is checked and unit-tested with promtool, a config change must
change the pod's checksum annotation, and the chart README must document every key
of values.yaml.

Helm: the `helm` binary when on the PATH, otherwise helm-sdkpy (helm_render.py).
Usage: check_chart.py REPO_ROOT
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import jsonschema
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from helm_render import merge  # noqa: E402  (same merge for both backends)

DAEMON = "compartment-auditd"
MIGRATE = "compartment-auditd-migrate"
KUBE_VERSION = "1.33.0"


class CheckFailed(Exception):
    """A check did not hold; the message says which and why."""


# --------------------------------------------------------------------------- helm


class Helm:
    """`helm lint` and `helm template`, through the binary or helm-sdkpy."""

    def __init__(self) -> None:
        self.binary = shutil.which("helm")
        self.name = f"helm binary {self.binary}" if self.binary else "helm-sdkpy"

    def _run(self, args: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(args, capture_output=True, text=True, timeout=300, check=False)

    def lint(self, chart: Path, values: Path | None) -> tuple[bool, str]:
        if self.binary:
            args = [self.binary, "lint", "--strict", "--kube-version", KUBE_VERSION, str(chart)]
        else:
            args = [sys.executable, str(HERE / "helm_render.py"), "lint", str(chart)]
        if values:
            args += ["-f", str(values)] if self.binary else [str(values)]
        proc = self._run(args)
        return proc.returncode == 0, proc.stdout + proc.stderr

    def template(self, chart: Path, release: str, values: Path | None) -> tuple[bool, str, str]:
        if self.binary:
            args = [self.binary, "template", release, str(chart), "--namespace", "default",
                    "--kube-version", KUBE_VERSION]
            if values:
                args += ["-f", str(values)]
        else:
            args = [sys.executable, str(HERE / "helm_render.py"), "template", str(chart), release]
            if values:
                args.append(str(values))
        proc = self._run(args)
        return proc.returncode == 0, proc.stdout, proc.stderr


# ---------------------------------------------------------------------- manifests


def load_yaml(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def parse_stream(text: str) -> list[dict]:
    """The rendered stream as objects; anything that is not a Kubernetes object fails."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as err:
        raise CheckFailed(f"rendered output is not valid YAML: {err}") from err
    for doc in docs:
        if not isinstance(doc, dict) or not all(doc.get(k) for k in ("apiVersion", "kind")) \
                or not (doc.get("metadata") or {}).get("name"):
            raise CheckFailed(f"rendered document is not a Kubernetes object: {str(doc)[:200]}")
    return docs


def expect(cond: bool, what: str) -> None:
    if not cond:
        raise CheckFailed(what)


def same(a, b) -> bool:
    """Equal with equal types: TOML `30.0` is not the integer setting `30`."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env") or []}


def check_pod(pod: dict, where: str) -> None:
    """Names unique, every mount backed by a volume."""
    containers = (pod.get("initContainers") or []) + (pod.get("containers") or [])
    names = [c["name"] for c in containers]
    expect(len(names) == len(set(names)), f"{where}: duplicate container names {names}")
    ports = [p["name"] for c in containers for p in c.get("ports") or [] if "name" in p]
    expect(len(ports) == len(set(ports)), f"{where}: duplicate port names {ports}")
    volumes = [v["name"] for v in pod.get("volumes") or []]
    expect(len(volumes) == len(set(volumes)), f"{where}: duplicate volume names {volumes}")
    for c in containers:
        for m in c.get("volumeMounts") or []:
            expect(m["name"] in volumes, f"{where}: {c['name']} mounts missing volume {m['name']}")


def check_hardened(container: dict, pod: dict, where: str) -> None:
    sc = container.get("securityContext") or {}
    psc = pod.get("securityContext") or {}
    expect(sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, f"{where}: runAsNonRoot")
    expect(sc.get("readOnlyRootFilesystem") is True, f"{where}: readOnlyRootFilesystem")
    expect(sc.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation")
    expect("ALL" in ((sc.get("capabilities") or {}).get("drop") or []),
           f"{where}: capabilities.drop ALL")
    seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
    expect(seccomp == "RuntimeDefault", f"{where}: seccompProfile RuntimeDefault")


DATABASE_FILES = ("COMPARTMENT_DATABASE_SSLROOTCERT", "COMPARTMENT_DATABASE_SSLCERT",
                  "COMPARTMENT_DATABASE_SSLKEY", "COMPARTMENT_DATABASE_PASSWORD_FILE")


def check_database_files(c: dict, v: dict, where: str) -> None:
    """Each TLS or password file the environment names lies in a read-only mount."""
    env = env_of(c)
    mounts = c.get("volumeMounts") or []
    for name in DATABASE_FILES:
        path = env.get(name, {}).get("value")
        if not path or path == "system":
            continue
        expect(any(path.startswith(m["mountPath"].rstrip("/") + "/") and m.get("readOnly")
                   for m in mounts), f"{where}: {name}={path} is not in a read-only mount")
    tls = v["database"]["tls"]
    expect(("COMPARTMENT_DATABASE_SSLMODE" in env) == bool(tls["sslmode"]),
           f"{where}: COMPARTMENT_DATABASE_SSLMODE iff database.tls.sslmode")
    expect(("COMPARTMENT_DATABASE_SSLKEY" in env) == bool(tls["clientCert"]["secretName"]),
           f"{where}: COMPARTMENT_DATABASE_SSLKEY iff database.tls.clientCert.secretName")
    expect(("COMPARTMENT_DATABASE_PASSWORD_FILE" in env) == bool(v["database"]["passwordSecret"]["name"]),
           f"{where}: COMPARTMENT_DATABASE_PASSWORD_FILE iff database.passwordSecret.name")


def check_daemon(c: dict, pod: dict, v: dict, where: str) -> None:
    check_hardened(c, pod, where)
    check_database_files(c, v, where)
    env = env_of(c)
    expect(env.get("COMPARTMENT_AUDIT_HTTP_ADDR", {}).get("value", "").startswith("0.0.0.0:"),
           f"{where}: COMPARTMENT_AUDIT_HTTP_ADDR must listen on 0.0.0.0 for probes")
    secret_ref = (env.get("COMPARTMENT_DATABASE_URL", {}).get("valueFrom") or {}).get("secretKeyRef")
    expect(bool(secret_ref), f"{where}: COMPARTMENT_DATABASE_URL must come from a Secret")
    expect(c.get("args", [])[-1:] == ["run"], f"{where}: the daemon runs `run`")
    for probe, path in (("startup", "/healthz"), ("liveness", "/healthz"), ("readiness", "/readyz")):
        got = ((c.get(f"{probe}Probe") or {}).get("httpGet") or {}).get("path")
        want = path if v["probes"][probe]["enabled"] else None
        expect(got == want, f"{where}: {probe}Probe path {got!r}, expected {want!r}")
    mounts = {m["name"]: m for m in c.get("volumeMounts") or []}
    expect(mounts.get("compartment-auditd-config", {}).get("mountPath") == "/etc/compartment"
           and "subPath" not in mounts["compartment-auditd-config"],
           f"{where}: config mounted as the /etc/compartment directory (no subPath: reloads)")
    if v["sink"]["enabled"]:
        expect(env["COMPARTMENT_AUDIT_FILE_SINK_ENABLED"]["value"] == "true", f"{where}: sink on")
        sink_dir = env["COMPARTMENT_AUDIT_FILE_SINK_DIR"]["value"]
        mount = mounts.get("compartment-auditd-sink", {}).get("mountPath")
        expect(mount is not None and sink_dir.startswith(mount.rstrip("/") + "/"),
               f"{where}: sink dir {sink_dir} must be below the volume mount {mount}")
        # Each replica of an N-replica Deployment names itself after its pod
        # (docs/replicas.md), with no setting needed.
        name_ref = ((env.get("COMPARTMENT_AUDIT_REPLICA_NAME", {}).get("valueFrom") or {})
                    .get("fieldRef") or {}).get("fieldPath")
        expect(name_ref == "metadata.name",
               f"{where}: COMPARTMENT_AUDIT_REPLICA_NAME must come from the pod's metadata.name")
    else:
        expect(env["COMPARTMENT_AUDIT_FILE_SINK_ENABLED"]["value"] == "false", f"{where}: sink off")
        expect("compartment-auditd-sink" not in mounts, f"{where}: no sink volume when disabled")


def check_release(docs: list[dict], v: dict, case: str) -> None:
    """What the chart promises, for merged values `v` of the subchart."""
    by_kind: dict[str, list[dict]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)

    # The settings file renders to TOML equal to .Values.config.
    cms = [d for d in by_kind.get("ConfigMap", []) if "auditd.toml" in (d.get("data") or {})]
    expect(len(cms) == 1, f"{case}: one ConfigMap with auditd.toml")
    toml = tomllib.loads(cms[0]["data"]["auditd.toml"])
    expect(same(toml, v["config"] or {}), f"{case}: auditd.toml {toml} != values.config")

    pods = []
    for d in by_kind.get("Deployment", []) + by_kind.get("Job", []):
        pods.append((d, d["spec"]["template"]["spec"]))
    daemons = 0
    for obj, pod in pods:
        where = f"{case}: {obj['kind']}/{obj['metadata']['name']}"
        check_pod(pod, where)
        init = {c["name"]: c for c in pod.get("initContainers") or []}
        main = {c["name"]: c for c in pod.get("containers") or []}
        if obj["kind"] == "Job":
            expect(MIGRATE in main, f"{where}: only the migrate Job is rendered")
            ann = obj["metadata"].get("annotations") or {}
            expect(ann.get("helm.sh/hook") == "pre-install,pre-upgrade", f"{where}: hook events")
            check_hardened(main[MIGRATE], pod, where)
            check_database_files(main[MIGRATE], v, where)
            expect(main[MIGRATE]["args"] == ["migrate"], f"{where}: runs `migrate`")
            continue
        daemon = init.get(DAEMON) if v["nativeSidecar"] else main.get(DAEMON)
        expect(daemon is not None, f"{where}: daemon container in "
               f"{'initContainers' if v['nativeSidecar'] else 'containers'}")
        other = main.get(DAEMON) if v["nativeSidecar"] else init.get(DAEMON)
        expect(other is None, f"{where}: daemon rendered twice")
        daemons += 1
        if v["nativeSidecar"]:
            expect(daemon.get("restartPolicy") == "Always", f"{where}: native sidecar restartPolicy")
        check_daemon(daemon, pod, v, where)
        psc = pod.get("securityContext") or {}
        expect(psc.get("runAsNonRoot") is True, f"{where}: pod runAsNonRoot")
        if v["sink"]["enabled"]:
            expect(psc.get("fsGroup") is not None, f"{where}: pod fsGroup for the sink volume")
        ann = obj["spec"]["template"]["metadata"].get("annotations") or {}
        expect(("checksum/compartment-auditd-config" in ann) == v["rollOnConfigChange"],
               f"{where}: checksum annotation iff rollOnConfigChange")
        want_migrate = v["migrate"]["enabled"] and v["migrate"]["mode"] == "initContainer"
        expect((MIGRATE in init) == want_migrate, f"{where}: migrate init container")
        if want_migrate:
            names = [c["name"] for c in pod["initContainers"]]
            expect(names.index(MIGRATE) == 0, f"{where}: migrate runs first")
            check_hardened(init[MIGRATE], pod, where)
            check_database_files(init[MIGRATE], v, where)
        collector = main.get(v["collector"]["name"])
        expect((collector is not None) == v["collector"]["enabled"], f"{where}: collector")
        if collector:
            check_hardened(collector, pod, where)
            sink = [m for m in collector["volumeMounts"] if m["name"] == "compartment-auditd-sink"]
            expect(sink and sink[0].get("readOnly") is True, f"{where}: collector reads sink read-only")
            uid = (collector.get("securityContext") or {}).get("runAsUser")
            expect(uid == (daemon.get("securityContext") or {}).get("runAsUser"),
                   f"{where}: collector must run as the daemon's UID (files are 0600)")
        if obj["kind"] == "Deployment" and obj["metadata"]["name"].endswith(DAEMON):
            persistent = v["sink"]["enabled"] and v["sink"]["volume"]["type"] != "emptyDir"
            strategy = obj["spec"]["strategy"]["type"]
            expect(v["strategy"] or strategy == ("Recreate" if persistent else "RollingUpdate"),
                   f"{where}: strategy {strategy} for a {'persistent' if persistent else 'pod'} sink")
            expect(pod.get("automountServiceAccountToken") is False, f"{where}: no API token")
            expect(obj["spec"]["replicas"] == v["replicaCount"],
                   f"{where}: {obj['spec']['replicas']} replicas, expected {v['replicaCount']}")
    expect(daemons == (1 if v["mode"] == "standalone" or case.startswith("example") else 0),
           f"{case}: {daemons} pods run the daemon")
    hooks = [d for d in by_kind.get("Job", [])]
    expect(bool(hooks) == (v["migrate"]["enabled"] and v["migrate"]["mode"] == "hook"),
           f"{case}: migrate hook Job")

    for kind, flag in (("ServiceMonitor", v["metrics"]["serviceMonitor"]["enabled"]),
                       ("PodMonitor", v["metrics"]["podMonitor"]["enabled"]),
                       ("PrometheusRule", v["metrics"]["prometheusRule"]["enabled"]),
                       ("Service", v["service"]["enabled"])):
        expect(bool(by_kind.get(kind)) == flag, f"{case}: {kind} rendered iff enabled")
    for rule in by_kind.get("PrometheusRule", []):
        alerts = {r.get("alert") for g in rule["spec"]["groups"] for r in g["rules"]}
        sink_alerts = {"CompartmentAuditSinkStalled", "CompartmentAuditSinkNotWritable",
                       "CompartmentAuditSinkLagHigh", "CompartmentAuditMirrorHeldBack",
                       "CompartmentAuditNoLeader", "CompartmentAuditSeveralLeaders",
                       "CompartmentAuditSinkGroupStalled"}
        expect(bool(alerts & sink_alerts) == v["sink"]["enabled"],
               f"{case}: sink alerts iff the sink is enabled")


def prometheus_rules(docs: list[dict]) -> list[dict]:
    return [d["spec"] for d in docs if d["kind"] == "PrometheusRule"]


def promtool_check(specs: list[dict], scratch: Path, case: str) -> None:
    for i, spec in enumerate(specs):
        path = scratch / f"rules-{i}.yaml"
        path.write_text(yaml.safe_dump(spec), encoding="utf-8")
        proc = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True,
                              text=True, check=False)
        expect(proc.returncode == 0, f"{case}: promtool check rules:\n{proc.stdout}{proc.stderr}")


# ------------------------------------------------------------------------- README


def leaf_keys(values: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and not path.endswith(
                ("resources", "SecurityContext", "securityContext", "config")):
            keys += leaf_keys(value, path + ".")
        else:
            keys.append(path)
    return keys


# ---------------------------------------------------------------------------- main


@dataclass
class Case:
    name: str
    chart: Path
    values_file: Path | None
    values: dict = field(default_factory=dict)  # the subchart's merged values


def main(root: Path) -> int:
    chart = root / "helm" / "compartment-auditd"
    tests = root / "helm" / "tests"
    helm = Helm()
    print(f"Helm: {helm.name}")
    defaults = load_yaml(chart / "values.yaml")
    schema = json.loads((chart / "values.schema.json").read_text(encoding="utf-8"))
    validator = jsonschema.Draft7Validator(schema)
    failures: list[str] = []

    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        # The example parent chart, with this chart as its dependency in charts/
        # (what `helm dependency update` would put there).
        parent = scratch / "app-with-audit-sidecar"
        shutil.copytree(root / "helm" / "examples" / "app-with-audit-sidecar", parent)
        shutil.copytree(chart, parent / "charts" / "compartment-auditd")
        parent_values = load_yaml(parent / "values.yaml").get("compartment-auditd") or {}

        cases = [Case("defaults", chart, None)]
        cases += [Case(f"ci/{p.name}", chart, p) for p in sorted((chart / "ci").glob("*.yaml"))]
        cases.append(Case("tests/alerts-values.yaml", chart, tests / "alerts-values.yaml"))
        cases.append(Case("example app-with-audit-sidecar", parent, None))
        # The same example as a three-replica Deployment (one sink group).
        cases += [Case(f"example app-with-audit-sidecar/{p.name}", parent, p)
                  for p in sorted(parent.glob("values-*.yaml"))]
        for case in cases:
            if case.chart == parent:
                extra = load_yaml(case.values_file) if case.values_file else {}
                override = merge(parent_values, extra.get("compartment-auditd") or {})
            else:
                override = load_yaml(case.values_file) if case.values_file else {}
            case.values = merge(defaults, override)
            try:
                errors = sorted(validator.iter_errors(case.values), key=str)
                expect(not errors, f"{case.name}: values do not match values.schema.json: "
                       + "; ".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors))
                ok, out = helm.lint(case.chart, case.values_file)
                expect(ok, f"{case.name}: helm lint --strict failed:\n{out}")
                ok, rendered, err = helm.template(case.chart, "demo", case.values_file)
                expect(ok, f"{case.name}: helm template failed:\n{err}")
                docs = parse_stream(rendered)
                check_release(docs, case.values, case.name)
                promtool_check(prometheus_rules(docs), scratch, case.name)
                if case.values_file and case.values_file.name == "alerts-values.yaml":
                    specs = prometheus_rules(docs)
                    (scratch / "rules.yaml").write_text(yaml.safe_dump(specs[0]), encoding="utf-8")
                    shutil.copy(tests / "alerts.test.yaml", scratch / "alerts.test.yaml")
                    proc = subprocess.run(["promtool", "test", "rules",
                                           str(scratch / "alerts.test.yaml")],
                                          capture_output=True, text=True, check=False)
                    expect(proc.returncode == 0,
                           f"{case.name}: promtool test rules:\n{proc.stdout}{proc.stderr}")
                print(f"  ok   {case.name}: lint, schema, template ({len(docs)} objects)")
            except CheckFailed as err:
                failures.append(str(err))
                print(f"  FAIL {case.name}", file=sys.stderr)

        # Every invalid values file must be refused, and for the right reason.
        for path in sorted((tests / "invalid-values").glob("*.yaml")):
            name = f"invalid-values/{path.name}"
            header = path.read_text(encoding="utf-8")
            m = re.search(r"^# expect: (schema|fail \"(.+)\")$", header, re.M)
            try:
                expect(m is not None, f"{name}: needs an `# expect: schema` or "
                       "`# expect: fail \"message\"` line")
                lint_ok, _ = helm.lint(chart, path)
                tpl_ok, _, err = helm.template(chart, "demo", path)
                expect(not tpl_ok, f"{name}: helm template accepted invalid values")
                if m.group(1) == "schema":
                    expect(not lint_ok, f"{name}: helm lint accepted values the schema rejects")
                    expect(any(validator.iter_errors(merge(defaults, load_yaml(path)))),
                           f"{name}: values.schema.json accepts it")
                else:
                    expect(m.group(2) in err, f"{name}: expected {m.group(2)!r} in:\n{err}")
                print(f"  ok   {name}: refused")
            except CheckFailed as err:
                failures.append(str(err))
                print(f"  FAIL {name}", file=sys.stderr)

        # A change of `config` changes the pod's checksum annotation (rolls the pods).
        try:
            variant = scratch / "config-variant.yaml"
            variant.write_text(yaml.safe_dump({"config": {"retention": {"days": 30}}}),
                               encoding="utf-8")
            sums = []
            for values in (None, variant):
                ok, rendered, err = helm.template(chart, "demo", values)
                expect(ok, f"checksum: helm template failed:\n{err}")
                dep = next(d for d in parse_stream(rendered) if d["kind"] == "Deployment")
                sums.append(dep["spec"]["template"]["metadata"]["annotations"]
                            ["checksum/compartment-auditd-config"])
            expect(sums[0] != sums[1], "checksum: a config change must change the annotation")
            print("  ok   a config change changes checksum/compartment-auditd-config")
        except CheckFailed as err:
            failures.append(str(err))

    # The chart README documents every key of values.yaml.
    readme = (chart / "README.md").read_text(encoding="utf-8")
    missing = [k for k in leaf_keys(defaults) if f"`{k}`" not in readme]
    if missing:
        failures.append(f"helm/compartment-auditd/README.md: values not documented: {missing}")
    else:
        print(f"  ok   README documents all {len(leaf_keys(defaults))} values")

    for failure in failures:
        print(f"\nFAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(Path(sys.argv[1]).resolve()))
