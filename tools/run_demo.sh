#!/usr/bin/env bash
# The demo job: pretrain a small BEST-RQ SummaryMixing Conformer on the demo
# corpus (synthetic speech in LibriSpeech's layout) on CPU, ~6 minutes
# (18 epochs, 1782 optimizer steps: with 6, SummaryMixing's masked accuracy
# is still 1.6x chance and its speaker features no better than at random
# initialisation; see the pretraining README's five-mixer table).
# The real recipe and YAML run; only sizes and schedule are overridden.
# Then the seven MP3S tasks' probes on the frozen result (tools/run_probes.sh;
# PROBES=0 skips them; FINETUNE=1 adds the fine-tuning comparison).
# MIXER=fastformer bash tools/run_demo.sh picks another mixer.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$ROOT/.venv/bin/python}
MIXER=${MIXER:-summarymixing}
OUT=$(realpath -m "${OUT:-$ROOT/results/demo_bestrq_$MIXER}")  # the recipe runs from its folder
EPOCHS=${EPOCHS:-18}
PROBES=${PROBES:-1}

"$PY" "$ROOT/tools/demo_corpus.py" --out "$ROOT/demo_data" --tasks librispeech
# ~30 min of speech (train-clean-100 and the demo's train-clean-360, 449
# utterances): the pretraining sees more than the ASR probe's training set.
mapfile -t OVERRIDES < <("$PY" "$ROOT/tools/demo_overrides.py" "$MIXER" --epochs "$EPOCHS" \
    --train_splits train-clean-100,train-clean-360)
# SEED=2: another pretraining seed (and the probes', through run_probes.sh).
[ -z "${SEED:-}" ] || OVERRIDES+=(--seed="$SEED")
cd "$ROOT/recipes/LibriSpeech/self-supervised-learning/BEST-RQ-linear"
"$PY" train.py "hparams/bestrq_$MIXER.yaml" \
    --data_folder="$ROOT/demo_data/LibriSpeech" \
    --output_folder="$OUT" \
    "${OVERRIDES[@]}"
echo
echo "Loss, masked accuracy, codes used and chance (share of the most frequent code), every 200 steps ($OUT/train_steps_log.txt):"
cut -d, -f1,3,5,6,8 "$OUT/train_steps_log.txt" | sed -n '1p;0~20p;$p'
echo "Per epoch ($OUT/train_log.txt):"
tail -n 3 "$OUT/train_log.txt"

# FINETUNE=1: the fine-tuning comparison too (tools/run_finetune_demo.sh,
# ~10 more minutes), whose rows join the demo table.
if [ "${FINETUNE:-0}" != 0 ]; then
    echo
    MIXER="$MIXER" PRETRAINED="$OUT" bash "$ROOT/tools/run_finetune_demo.sh"
fi
if [ "$PROBES" != 0 ]; then
    echo
    MIXER="$MIXER" PRETRAINED="$OUT" SEED="${SEED:-}" bash "$ROOT/tools/run_probes.sh"
fi
