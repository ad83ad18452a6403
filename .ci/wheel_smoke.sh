#!/usr/bin/env bash
# The package as a user installs it: build the wheel, install it into a clean virtualenv, and use
# it from a folder outside the checkout: toy scene -> attribute -> verify -> export -> the
# explorer serving the sample graphs shipped inside the wheel.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
app_pid=
cleanup() { [ -n "$app_pid" ] && kill "$app_pid" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT

python3 -m pip wheel -q --no-deps --no-build-isolation -w "$tmp/dist" "$root" 2>/dev/null \
  || python3 -m pip wheel -q --no-deps -w "$tmp/dist" "$root"
python3 "$root/install.py" --venv "$tmp/venv" --wheel "$tmp"/dist/vlm_circuits-*.whl
py="$tmp/venv/bin/python"
cd "$tmp"
"$py" - "$root" <<'PY'
import sys, tracer, app
for module in (tracer, app):
    assert not module.__file__.startswith(sys.argv[1]), f"{module.__name__} imported from the checkout"
print("imported from", tracer.__file__.rsplit("/", 2)[0])
PY
export HF_HUB_OFFLINE=1
"$py" -m tracer toy sample --out scenes -n 2 --type color
question=$("$py" -c "import json; print(json.loads(open('scenes/examples.jsonl').readline())['question'])")
"$py" -m tracer attribute --prompt "$question" --image scenes/heldout_00000.png \
  --out smoke.graph.safetensors --max_feature_nodes 64 --verify
"$py" -m tracer verify smoke.graph.safetensors
"$py" -m tracer export smoke.graph.safetensors --format neuronpedia --out exported
ls exported/*.json >/dev/null

"$py" -m app --no-live --port 8797 > app.log 2>&1 &
app_pid=$!
"$py" - <<'PY'
import json, time, urllib.request
base = "http://127.0.0.1:8797"
for _ in range(120):
    try:
        urllib.request.urlopen(base + "/", timeout=2).read()
        break
    except OSError:
        time.sleep(0.5)
else:
    raise SystemExit("the app did not answer within 60 s: " + open("app.log").read())
layout = urllib.request.urlopen(base + "/_dash-layout", timeout=10).read().decode()
assert "color-heldout2-what-color-is-the-cross.graph.safetensors" in layout, "sample graphs not listed"
print("the app serves the shipped sample graphs")
PY
echo "wheel smoke test: PASS"
