#!/usr/bin/env bash
# The demo's numbers beside their seed spread: the whole demo (pretraining,
# then every probe on the pretrained encoder, on the same encoder at random
# initialisation and on fbank) once per seed, then one table of
# mean ± standard deviation over the seeds (tools/demo_table.py --runs). A
# difference of means within the two inputs' deviations added is "no
# difference". The deviations are also written to
# $RESULTS/spread_$MIXER.tsv, where tools/demo_table.py (so make demo) reads
# them for its single-seed verdicts.
#
# ~18 min per seed on 2 cores (SEEDS="1 2 3": ~55 min). MIXER, EPOCHS,
# TASKS and PY as in tools/run_demo.sh and tools/run_probes.sh.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$ROOT/.venv/bin/python}
MIXER=${MIXER:-summarymixing}
SEEDS=${SEEDS:-1 2 3}
RESULTS=$(realpath -m "${RESULTS:-$ROOT/results/evidence}")

RUNS=()
for SEED in $SEEDS; do
    echo "== seed $SEED"
    RUN="$RESULTS/seed_$SEED"
    SEED="$SEED" MIXER="$MIXER" OUT="$RUN/demo_bestrq_$MIXER" RESULTS="$RUN" TABLE=0 \
        bash "$ROOT/tools/run_demo.sh"
    RUNS+=("$RUN")
done
echo
"$PY" "$ROOT/tools/demo_table.py" --mixer "$MIXER" --runs "${RUNS[@]}" \
    --write-spread "$RESULTS/spread_$MIXER.tsv" --markdown "$RESULTS/evidence_table_$MIXER.md"
