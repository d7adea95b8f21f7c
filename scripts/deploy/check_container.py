#!/usr/bin/env python3
"""Static checks of the Dockerfile and deploy/compose.yaml (no Docker engine here).

The image and the compose example are not built in tests; these checks keep the
properties docs/deployment.md promises from drifting: a multi-stage build whose
final stage is distroless, holds only the binary (and the sink's parent directory),
runs as UID 65532 and starts `compartment-auditd run`; a compose service that runs
read-only as that user without capabilities and bind-mounts the sink directory.
Usage: check_container.py REPO_ROOT
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import yaml

SINK = "/var/lib/compartment/audit-logs"


def dockerfile_problems(text: str) -> list[str]:
    # Join continuation lines, drop comments.
    lines = re.sub(r"\\\n", " ", text).splitlines()
    lines = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    stages: list[list[str]] = []
    for line in lines:
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    problems = []
    if len(stages) < 2:
        problems.append("Dockerfile: expected a multi-stage build")
        return problems
    final = stages[-1]
    if not re.match(r"FROM gcr\.io/distroless/cc-debian12:nonroot\b", final[0]):
        problems.append(f"Dockerfile: final stage should be distroless cc nonroot, is {final[0]}")
    instructions = [line.split()[0].upper() for line in final]
    if "RUN" in instructions:
        problems.append("Dockerfile: the final stage must not RUN anything (no shell there)")
    copies = [line for line in final if line.upper().startswith("COPY ")]
    if any("--from=build" not in c for c in copies):
        problems.append("Dockerfile: the final stage copies only from the build stage")
    if not any(c.endswith(" /usr/local/bin/compartment-auditd") for c in copies):
        problems.append("Dockerfile: the binary goes to /usr/local/bin/compartment-auditd")
    users = [line for line in final if line.upper().startswith("USER ")]
    if users != ["USER 65532:65532"]:
        problems.append(f"Dockerfile: final stage must run as USER 65532:65532, has {users}")
    entry = [line for line in final if line.upper().startswith("ENTRYPOINT ")]
    cmd = [line for line in final if line.upper().startswith("CMD ")]
    if not entry or json.loads(entry[-1][11:]) != ["/usr/local/bin/compartment-auditd"]:
        problems.append("Dockerfile: ENTRYPOINT must be the binary (exec form)")
    if not cmd or json.loads(cmd[-1][4:]) != ["run"]:
        problems.append("Dockerfile: CMD must be [\"run\"]")
    if not any(re.match(r"ENV COMPARTMENT_AUDIT_HTTP_ADDR=0\.0\.0\.0:9464$", line) for line in final):
        problems.append("Dockerfile: the image listens on 0.0.0.0:9464")
    if not any("cargo build --release --locked" in line for line in stages[0]):
        problems.append("Dockerfile: the build stage runs cargo build --release --locked")
    return problems


def compose_problems(doc: dict) -> list[str]:
    problems = []
    svc = (doc.get("services") or {}).get("compartment-auditd")
    if not svc:
        return ["compose.yaml: no compartment-auditd service"]
    if svc.get("user") != "65532:65532":
        problems.append("compose.yaml: compartment-auditd runs as 65532:65532")
    if svc.get("read_only") is not True:
        problems.append("compose.yaml: read_only: true")
    if svc.get("cap_drop") != ["ALL"]:
        problems.append("compose.yaml: cap_drop: [ALL]")
    if "no-new-privileges:true" not in (svc.get("security_opt") or []):
        problems.append("compose.yaml: no-new-privileges")
    binds = [v for v in svc.get("volumes") or [] if isinstance(v, dict) and v.get("type") == "bind"]
    sink = [v for v in binds if v.get("target") == SINK]
    if not sink or (sink[0].get("bind") or {}).get("create_host_path") is not False:
        problems.append(f"compose.yaml: bind-mount the sink at {SINK} with create_host_path: false")
    env = svc.get("environment") or {}
    if env.get("COMPARTMENT_AUDIT_FILE_SINK_DIR") != SINK:
        problems.append("compose.yaml: COMPARTMENT_AUDIT_FILE_SINK_DIR matches the bind mount")
    if any("COMPARTMENT_DATABASE_URL" in str(k) for k in env):
        problems.append("compose.yaml: the database URL comes from auditd.env, not the file")
    if any(not str(p).startswith("127.0.0.1:") for p in svc.get("ports") or []):
        problems.append("compose.yaml: publish the HTTP port on loopback only")
    return problems


def main(root: Path) -> int:
    problems = dockerfile_problems((root / "Dockerfile").read_text(encoding="utf-8"))
    try:
        compose = yaml.safe_load((root / "deploy" / "compose.yaml").read_text(encoding="utf-8"))
        problems += compose_problems(compose)
    except yaml.YAMLError as err:
        problems.append(f"compose.yaml is not valid YAML: {err}")
    for problem in problems:
        print(f"FAILED: {problem}", file=sys.stderr)
    if not problems:
        print("  ok   Dockerfile and deploy/compose.yaml")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]).resolve()) if len(sys.argv) == 2 else 2)
