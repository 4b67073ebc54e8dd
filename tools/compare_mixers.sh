#!/usr/bin/env bash
# The paper's comparison at toy scale (`make compare`): every paper mixer
# (MHSA, HyperMixing, Fastformer, SummaryMixing, Mamba) pretrained on the
# demo LibriSpeech with the same budget (the demo encoder sizes of
# tools/demo_overrides.py, the same epochs, batches and schedule), then
# probed on the demo corpora with the demo probe settings of
# tools/run_probes.sh (pretrained encoder only). Ends with one table
# (tools/compare_table.py): validation masked accuracy and its chance level,
# seconds per pretraining step, peak memory of the pretraining process, and
# the probe scores, one row per mixer; also written to
# $RESULTS/compare_table.md.
#
# CPU; about 3 minutes per mixer with the defaults (15 min 19 s for the
# five on 2 cores; the recipe README's table). MIXERS="summarymixing fastformer" runs some only; EPOCHS the
# shared budget (6); PROBE_TASKS the probes (asr voxceleb; any of
# run_probes.sh's TASKS); RESULTS the output folder; PY another Python.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$ROOT/.venv/bin/python}
MIXERS=${MIXERS:-$("$PY" -c "from lobes.nnet.mixers import mixer_names; print(' '.join(mixer_names(paper=True)))")}
EPOCHS=${EPOCHS:-6}
PROBE_TASKS=${PROBE_TASKS:-asr voxceleb}
RESULTS=$(realpath -m "${RESULTS:-$ROOT/results/compare}")  # the recipes run from their folders
mkdir -p "$RESULTS"

"$PY" "$ROOT/tools/demo_corpus.py" --out "$ROOT/demo_data" --tasks librispeech
for MIXER in $MIXERS; do
    OUT="$RESULTS/demo_bestrq_$MIXER"
    rm -rf "$OUT"  # the same budget for every mixer: no resumed run
    echo "== pretraining $MIXER ($OUT)"
    mapfile -t OVERRIDES < <("$PY" "$ROOT/tools/demo_overrides.py" "$MIXER" \
        --epochs "$EPOCHS" --train_splits train-clean-100,train-clean-360)
    cd "$ROOT/recipes/LibriSpeech/self-supervised-learning/BEST-RQ-linear"
    # Peak resident memory of the whole pretraining process, in KB.
    /usr/bin/time -f "%M" -o "$RESULTS/peak_rss_kb_$MIXER.txt" \
        "$PY" train.py "hparams/bestrq_$MIXER.yaml" \
        --data_folder="$ROOT/demo_data/LibriSpeech" \
        --output_folder="$OUT" \
        "${OVERRIDES[@]}"
    MIXER="$MIXER" PRETRAINED="$OUT" RESULTS="$RESULTS" INITS=pretrained \
        TASKS="$PROBE_TASKS" TABLE=0 bash "$ROOT/tools/run_probes.sh"
done
echo
"$PY" "$ROOT/tools/compare_table.py" --results "$RESULTS" --mixers "${MIXERS// /,}" \
    --markdown "$RESULTS/compare_table.md"
