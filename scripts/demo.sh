#!/usr/bin/env bash
# The scalelab demo pipeline (what `make demo` runs): tokenizer -> pretrain -> SFT -> eval -> report -> chat.
#
#   bash scripts/demo.sh [RUN_DIR]                          # default runs/demo; about 10 minutes on 2 CPU cores
#   DEMO_PROFILE=laptop bash scripts/demo.sh runs/laptop    # configs/laptop_*.yaml: about 2 hours, a better model
#   DEMO_PROFILE=gpu bash scripts/demo.sh runs/gpu          # configs/gpu_*.yaml: one CUDA GPU, about 75 minutes
#   DEMO_DATA_ONLY=1 bash scripts/demo.sh                     # only say which data sets it would use and replace
#
# Re-running continues: a finished stage is skipped (its marker is RUN_DIR/.demo/<stage>.done; delete it to redo
# the stage), and a stage that was interrupted resumes from its last checkpoint. Every stage is a plain `scalelab`
# command reading configs/<profile>_*.yaml, so any line below can be run (or tuned) on its own.
set -euo pipefail

RUN="${1:-runs/demo}"
PROFILE="${DEMO_PROFILE:-demo}"
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
export PYTHONUNBUFFERED=1
SL=("$PY" -m scalelab)
MARKS="$RUN/.demo"
mkdir -p "$MARKS"
for f in tokenizer pretrain sft eval; do
  [ -f "configs/${PROFILE}_$f.yaml" ] || { echo "demo.sh: configs/${PROFILE}_$f.yaml not found (DEMO_PROFILE=$PROFILE)" >&2; exit 2; }
done
echo "scalelab demo: profile '$PROFILE', run folder $RUN (re-run this command to continue after an interruption)"
T0=$(date +%s)

# ------------------------------------------------------------------------------------------------------------------
# DATA SETS: which named sets the demo reads and what stands in for an absent one. scalelab/data_sources.py decides
# where each is found ($SCALELAB_DATA, default ../shared/data; then the cache); `scalelab data pull NAME` fetches one.
# ------------------------------------------------------------------------------------------------------------------
echo
echo "== data sets"
"${SL[@]}" data list stdlib magic_gamma_telescope fastchat_dummy_conversation oasst_en_100_trees dolly_hhrlhf_small
USED="stdlib (tokenizer and pretraining corpus)"
REPLACED=""
if "${SL[@]}" data path magic_gamma_telescope > /dev/null 2>&1; then
  HAVE_MAGIC=1; USED="$USED, magic_gamma_telescope (tabular study)"
else
  HAVE_MAGIC=0; USED="$USED, digits (tabular study)"
  REPLACED="magic_gamma_telescope -> scikit-learn's digits (tabular study)"
fi
for s in fastchat_dummy_conversation oasst_en_100_trees dolly_hhrlhf_small; do
  if "${SL[@]}" data path "$s" > /dev/null 2>&1; then
    USED="$USED, $s (SFT chats)"
  else
    REPLACED="${REPLACED:+$REPLACED; }$s -> synthetic conversations (SFT)"
  fi
done
if [ "$PROFILE" = gpu ]; then  # its mixture and evaluation read these; nothing stands in for them
  NEEDED=(gsm8k mbpp arc hellaswag piqa winogrande copa openbookqa boolq commonsense_qa)
  "${SL[@]}" data list "${NEEDED[@]}" | sed -n '2,11p'
  for s in "${NEEDED[@]}"; do
    if "${SL[@]}" data path "$s" > /dev/null 2>&1; then USED="$USED, $s"; else
      echo "demo.sh: the gpu profile needs $s: scalelab data pull $s (or set SCALELAB_DATA)" >&2; exit 2; fi
  done
fi
echo "used: $USED"
echo "replaced: ${REPLACED:-nothing}"
[ "${DEMO_DATA_ONLY:-0}" = 1 ] && exit 0

# Run a stage unless its marker says it finished; record its wall time in the marker.
stage() {
  local name="$1"; shift
  if [ -f "$MARKS/$name.done" ]; then
    echo "== $name: already done ($(cat "$MARKS/$name.done") s), skipped (rm $MARKS/$name.done to redo)"
    return 0
  fi
  echo
  echo "== $name: $*"
  local start; start=$(date +%s)
  "$@"
  echo $(( $(date +%s) - start )) > "$MARKS/$name.done"
  echo "== $name: done in $(cat "$MARKS/$name.done") s"
}

# ------------------------------------------------------------------------------------------------------------------
# TABULAR STUDY: MLP vs classical baselines on a real dataset (MAGIC gamma telescope) and on a synthetic teacher task
# with a known floor (Bayes accuracy 0.90), plus score against training FLOPs. Each prints a table and its plot path.
# ------------------------------------------------------------------------------------------------------------------
if [ "$HAVE_MAGIC" = 1 ]; then
  stage tabular-magic "${SL[@]}" curves --config configs/magic_curves.yaml --out "$RUN/tabular/magic"
else
  stage tabular-digits "${SL[@]}" curves --config configs/magic_curves.yaml --dataset digits \
    --out "$RUN/tabular/digits"
fi
stage tabular-teacher "${SL[@]}" curves --config configs/teacher_curves.yaml --out "$RUN/tabular/teacher"
stage tabular-compute "${SL[@]}" compute-curves --config configs/teacher_compute.yaml \
  --out "$RUN/tabular/compute_teacher"

# ------------------------------------------------------------------------------------------------------------------
# LANGUAGE MODEL: tokenizer -> pretrain -> SFT -> eval (base and chat) -> report
# ------------------------------------------------------------------------------------------------------------------
stage tokenizer "${SL[@]}" tokenizer --config configs/${PROFILE}_tokenizer.yaml --run "$RUN"
stage pretrain  "${SL[@]}" pretrain  --config configs/${PROFILE}_pretrain.yaml  --run "$RUN"
stage sft       "${SL[@]}" sft       --config configs/${PROFILE}_sft.yaml       --run "$RUN"
stage eval-base "${SL[@]}" eval      --config configs/${PROFILE}_eval.yaml      --run "$RUN" --stage base
stage eval-chat "${SL[@]}" eval      --config configs/${PROFILE}_eval.yaml      --run "$RUN" --stage chat
# the report is cheap and always re-rendered from the JSON files
echo
"${SL[@]}" report --run "$RUN" > /dev/null
echo "== report: $RUN/report.md"

# ------------------------------------------------------------------------------------------------------------------
# What came out
# ------------------------------------------------------------------------------------------------------------------
echo
echo "== wall time per stage (seconds)"
for s in tabular-magic tabular-digits tabular-teacher tabular-compute tokenizer pretrain sft eval-base eval-chat; do
  [ -f "$MARKS/$s.done" ] && printf "  %-16s %6s\n" "$s" "$(cat "$MARKS/$s.done")"
done
printf "  %-16s %6s   (this invocation)\n" "total" "$(( $(date +%s) - T0 ))"

echo
echo "== data sets used: $USED"
echo "== data sets replaced: ${REPLACED:-nothing}"

echo
"${SL[@]}" report --run "$RUN" --table

echo
echo "== a short conversation with the demo chat model"
for q in "What is 23 plus 19?" "Hello! Who are you?"; do
  echo "user: $q"
  printf "assistant: "
  "${SL[@]}" chat --run "$RUN" --prompt "$q" --temperature 0 --max-tokens 48 || echo "(chat failed)"
done

cat <<EOF

Where things are ($RUN):
  tokenizer/          tokenizer.json + chat template
  base/, chat/        checkpoints (safetensors + meta.json); latest -> newest step
  metrics.jsonl       training curves;  eval/base.json, eval/chat.json: per-task scores
  report.md           the report, with loss.png and eval.png

Chat with it:         ${SL[*]} chat --run $RUN
Serve it (OpenAI API + web page):  ${SL[*]} serve --run $RUN
EOF
