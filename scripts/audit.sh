#!/usr/bin/env bash
# Audit the pinned dependencies for known vulnerabilities: pip-audit against constraints.txt (or the file given).
#
#   scripts/audit.sh                   # every pin of constraints.txt
#   scripts/audit.sh requirements.txt  # another pinned file
#
# Each pin is looked up as pinned (--no-deps: the file pins everything; --disable-pip: nothing is installed);
# PyTorch's local build label is dropped (torch==2.13.0+cpu is audited as torch 2.13.0, the same source).
# The summary counts the pins audited, the vulnerabilities and the pins the service could not audit (pip-audit
# itself prints "No known vulnerabilities found" even when it audited nothing).
#
# Exit code: 1 when a vulnerability is found; otherwise 0, also when the audit could not run (offline-tolerant):
# the service unreachable, or no pin known to it, is reported on stderr as SKIPPED or NOT AUDITED.
# AUDIT_SERVICE_URL and AUDIT_TIMEOUT override the reachability probe (the tests point it at a closed port).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${BIN:-.venv/bin}"
PINS="${1:-constraints.txt}"
PROBE="${AUDIT_SERVICE_URL:-}"  # optional reachability probe; unset: pip-audit's own failure is reported
TIMEOUT="${AUDIT_TIMEOUT:-10}"

if [ -n "$PROBE" ] && ! "$BIN/python" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])).close()' \
    "$PROBE" "$TIMEOUT" 2>/dev/null; then
  echo "audit: SKIPPED: the vulnerability service ($PROBE) is unreachable; nothing was audited. Run again with network access." >&2
  exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
sed -E 's/^([A-Za-z0-9_.-]+==[^+ ;#]+)\+[A-Za-z0-9_.]+/\1/' "$PINS" > "$work/pins.txt"
echo "audit: $(grep -c '==' "$work/pins.txt") pins of $PINS, $(date -u +%Y-%m-%dT%H:%MZ), pip-audit $("$BIN/pip-audit" --version | cut -d' ' -f2)" >&2
status=0
"$BIN/pip-audit" --requirement "$work/pins.txt" --no-deps --disable-pip --progress-spinner off --desc on \
  --format json --output "$work/report.json" 2> "$work/stderr" || status=$?
if [ ! -s "$work/report.json" ]; then
  cat "$work/stderr" >&2
  echo "audit: SKIPPED: pip-audit could not complete (exit $status); nothing was audited." >&2
  exit 0
fi
exec "$BIN/python" - "$work/report.json" <<'PY'
import json
import sys

deps = json.load(open(sys.argv[1]))["dependencies"]
skipped = [d for d in deps if "skip_reason" in d]
audited = [d for d in deps if "skip_reason" not in d]
vulns = [(d["name"], d["version"], v) for d in audited for v in d.get("vulns", [])]
for name, version, v in vulns:
    fixed = ", ".join(v.get("fix_versions", [])) or "no fix yet"
    print(f"audit: {name} {version}: {v['id']} (fixed in {fixed}) {v.get('description', '')[:200]}", file=sys.stderr)
if skipped:
    names = ", ".join(d["name"] for d in skipped)
    print(f"audit: could not audit {len(skipped)} pins (unknown to the vulnerability service): {names}", file=sys.stderr)
print(f"audit: {len(audited)} pins audited, {len(vulns)} known vulnerabilities, {len(skipped)} not audited", file=sys.stderr)
if not audited:
    print("audit: NOT AUDITED: the service answered but knows none of these versions (a mirror?)", file=sys.stderr)
sys.exit(1 if vulns else 0)
PY
