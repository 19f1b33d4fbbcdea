#!/usr/bin/env bash
# Every GPU figure in one command: the GPU tests (pytest -m gpu) and the three benchmarks at GPU sizes
# (gpt2-small preset, vocabulary 32768, bf16), then one table. Sized for at most 7 minutes on one H100/H200.
#
#   bash scripts/gpu_check.sh                       # on a machine with CUDA and the project's dependencies
#   bash scripts/gpu_check.sh --wheels .whl         # first installs the wheels in .whl (offline) into /tmp/site
#   bash scripts/gpu_check.sh --fetch-wheels .whl   # here, online: download the serving wheels for Python 3.12
#   bash scripts/gpu_check.sh --dry-run             # tiny sizes, CPU allowed: checks the script itself quickly
#
# A GPU machine lent for a few minutes (no network, no fastapi/uvicorn/pydantic): prepare the wheels once on the
# development machine, then run there with the wheels carried along:
#   echo /.whl/ >> .git/info/exclude && bash scripts/gpu_check.sh --fetch-wheels .whl
#   device run: command "bash scripts/gpu_check.sh --wheels .whl", carry [".whl"], timeout_s 540
# Results: benchmarks/results/*_cuda.json (and copies under $OUT when that is set), the table on stdout.
# Without CUDA the GPU tests skip, and the benchmarks run at tiny sizes on the CPU into a temporary folder.
set -uo pipefail
cd "$(dirname "$0")/.."

WHEELS="" FETCH="" DRY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) WHEELS="$2"; shift 2 ;;
    --fetch-wheels) FETCH="$2"; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
SERVE_PKGS="fastapi starlette uvicorn pydantic pydantic_core annotated-types annotated-doc typing-inspection httptools"

if [ -n "$FETCH" ]; then  # the versions this checkout's environment holds, as wheels for CPython 3.12 on x86-64
  specs=$($PY -c "import importlib.metadata as m, sys
print(' '.join(f'{n}=={m.version(n)}' for n in sys.argv[1:]))" $SERVE_PKGS) || exit 2
  mkdir -p "$FETCH"
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 -d "$FETCH" $specs || exit 1
  ls "$FETCH"
  exit 0
fi

if [ -n "$WHEELS" ]; then
  if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      "$WHEELS"/*.whl || { echo "gpu_check.sh: installing the wheels in $WHEELS failed" >&2; exit 1; }
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "gpu_check.sh: no wheels in $WHEELS (serving is skipped unless fastapi is installed)"
  fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 SCALELAB_NO_PROGRESS=1

CUDA=$($PY -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
if [ "$CUDA" != 1 ] && [ "$DRY" != 1 ]; then
  echo "gpu_check.sh: no CUDA device here; running the dry run (tiny sizes on the CPU) instead"
  DRY=1
fi
RES=benchmarks/results
if [ "$DRY" = 1 ]; then
  RES=$(mktemp -d); DEV=cpu; [ "$CUDA" = 1 ] && DEV=cuda
  GEN=(--device "$DEV" --new-tokens 8 --trials 1 --rounds 1 --levels 1,2)
  PRE=(--device "$DEV" --steps 2 --no-compile --seq-len 64 --batch-size 4)
  SRV=(--device "$DEV" --max-tokens 8 --seconds 1 --rounds 1 --levels 1,2 --max-batch 2)
else
  DEV=cuda
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
  GEN=(--device cuda --model gpt2-small --vocab 32768 --new-tokens 200 --trials 3 --rounds 2 --levels 1,8,64)
  PRE=(--device cuda --model gpt2-small --vocab 32768 --seq-len 1024 --batch-size 16 --steps 20)
  SRV=(--device cuda --model gpt2-small --vocab 32768 --max-tokens 128 --seconds 12 --rounds 2 --levels 1,8,64
       --max-batch 64)
fi
LOG=$(mktemp -d)
status() { [ "$1" = 0 ] && echo ok || echo "failed (exit $1)"; }

echo "== GPU tests"
timeout 240 $PY -m pytest -q -m gpu -rs -p no:cacheprovider tests 2>&1 | tee "$LOG/tests.txt"
T_RC=${PIPESTATUS[0]}

echo "== bench_pretrain"
timeout 180 $PY benchmarks/bench_pretrain.py "${PRE[@]}" --out "$RES/bench_pretrain_$DEV.json" 2>&1 | tail -n 8
P_RC=${PIPESTATUS[0]}

echo "== bench_generate"
timeout 150 $PY benchmarks/bench_generate.py "${GEN[@]}" --out "$RES/bench_generate_$DEV.json" 2>&1 | tail -n 12
G_RC=${PIPESTATUS[0]}

echo "== bench_serve"
if $PY -c "import fastapi, uvicorn, pydantic" 2>/dev/null; then
  timeout 150 $PY benchmarks/bench_serve.py "${SRV[@]}" --out "$RES/bench_serve_$DEV.json" 2>&1 | tail -n 6
  S_RC=${PIPESTATUS[0]}
else
  echo "skipped: fastapi/uvicorn/pydantic are missing (carry them: --fetch-wheels here, --wheels there)"
  S_RC=skipped
fi

if [ -n "${OUT:-}" ]; then cp "$RES"/bench_*_"$DEV".json "$LOG/tests.txt" "$OUT"/ 2>/dev/null; fi

$PY - "$RES" "$DEV" "$DRY" "$(tail -n 1 "$LOG/tests.txt")" "$(status $T_RC)" "$(status $P_RC)" "$(status $G_RC)" \
  "$([ "$S_RC" = skipped ] && echo skipped || status "$S_RC")" <<'EOF'
import json, sys
from pathlib import Path

res, dev, dry, tests_line, *rcs = sys.argv[1:]
def load(name):
    p = Path(res) / f"{name}_{dev}.json"
    return json.loads(p.read_text()) if p.is_file() else {}
rows = [("GPU tests", tests_line, rcs[0], "all pass")]
p = load("bench_pretrain")
if p:
    o = p["ours"]
    rows += [("pretrain ours tokens/s", f"{o['tokens_per_s']:,.0f}", rcs[1], ""),
             ("pretrain HF (SDPA) tokens/s", f"{p['hf']['tokens_per_s']:,.0f}", "", ""),
             ("pretrain ours / HF", f"{p['ratio']:.2f}x", "", ">= 2.5x, loss within 2%"),
             ("pretrain MFU vs measured peak", f"{100 * o['mfu']:.1f}%", "", ""),
             ("pretrain MFU vs vendor peak", "n/a" if o.get("mfu_vs_vendor_peak") is None
              else f"{100 * o['mfu_vs_vendor_peak']:.1f}%", "", ">= 50% (gpt2-small, trainer's log)")]
else:
    rows.append(("bench_pretrain", "no result", rcs[1], ""))
g = load("bench_generate")
if g:
    s = g["single_stream"]
    rows += [("1 stream engine tokens/s", f"{s['engine']['tokens_per_s']:,.0f}", rcs[2], ">= 2,000"),
             ("1 stream HF generate tokens/s", f"{s['hf_generate']['tokens_per_s']:,.0f}", "", ""),
             ("engine / HF generate", f"{g['engine_over_hf']:.2f}x", "", ">= 10x"),
             ("greedy agreement with HF", f"{100 * g['greedy_agreement_with_hf']:.0f}%", "", "")]
    for lv in g["concurrent_greedy"]:
        rows.append((f"{lv['streams']} streams aggregate tokens/s", f"{lv['tokens_per_s']:,.0f}", "",
                     ">= 40,000" if lv["streams"] == 64 else ""))
else:
    rows.append(("bench_generate", "no result", rcs[2], ""))
s = load("bench_serve")
if s:
    for lv in s["levels"]:
        rows.append((f"serve {lv['clients']} clients tokens/s", f"{lv['tokens_per_s']:,.0f}", rcs[3], ""))
    if g:
        top = max(lv["streams"] for lv in g["concurrent_greedy"])
        eng = {lv["streams"]: lv["tokens_per_s"] for lv in g["concurrent_greedy"]}
        srv = {lv["clients"]: lv["tokens_per_s"] for lv in s["levels"]}
        if top in srv:
            rows.append((f"serve / engine at {top}", f"{100 * srv[top] / eng[top]:.0f}%", "", ">= 70%"))
else:
    rows.append(("bench_serve", "no result", rcs[3], ""))
w = max(len(r[0]) for r in rows)
print(f"\n{'what':<{w}}  {'measured':>14}  {'run':<16} target ({dev}{', dry run' if dry == '1' else ''})")
for name, value, rc, target in rows:
    print(f"{name:<{w}}  {value:>14}  {rc:<16} {target}")
EOF
