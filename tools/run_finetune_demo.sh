#!/usr/bin/env bash
# The fine-tuning comparison of the demo: the demo encoder that
# tools/run_demo.sh pretrained, fine-tuned whole with a CTC head on the demo
# LibriSpeech (recipes/LibriSpeech/ASR/CTC-BEST-RQ-linear), against the same
# recipe and budget with
#   - the encoder frozen (freeze_encoder: True): a probe with the same head;
#   - the same architecture randomly initialised (init_from_pretrained: False).
# Ends with one line per run: the greedy test CER (and WER) of test-clean and
# test-other. CPU; the time grows with EPOCHS (see the recipe README).
# MIXER=fastformer picks another demo encoder; PY another Python; EPOCHS,
# LR, LR_ENCODER the shared budget and learning rates.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$ROOT/.venv/bin/python}
MIXER=${MIXER:-summarymixing}
PRETRAINED=${PRETRAINED:-$ROOT/results/demo_bestrq_$MIXER}
RESULTS=${RESULTS:-$ROOT/results}
# Absolute: the recipe runs from its own folder.
PRETRAINED=$(realpath -m "$PRETRAINED"); RESULTS=$(realpath -m "$RESULTS")
EPOCHS=${EPOCHS:-20}
LR=${LR:-0.001}
LR_ENCODER=${LR_ENCODER:-0.0005}

if [ ! -d "$PRETRAINED/save" ]; then
    echo "No pretrained demo encoder in $PRETRAINED/save: run 'make demo' (or tools/run_demo.sh) first." >&2
    exit 1
fi
"$PY" "$ROOT/tools/demo_corpus.py" --out "$ROOT/demo_data" --tasks librispeech
cd "$ROOT/recipes/LibriSpeech/ASR/CTC-BEST-RQ-linear"
declare -A SWITCH=(
    [finetuned]=""
    [frozen]="--freeze_encoder=True"
    [random_init]="--init_from_pretrained=False"
)
RUNS=(finetuned frozen random_init)
for RUN in "${RUNS[@]}"; do
    OUT="$RESULTS/demo_ft_${RUN}_$MIXER"
    rm -rf "$OUT"  # a folder of an earlier demo belongs to an earlier encoder
    echo "== $RUN ($OUT)"
    # shellcheck disable=SC2086  # the switch is one word or none
    "$PY" train.py hparams/train_clean_100.yaml ${SWITCH[$RUN]} \
        --pretrained_path="$PRETRAINED/save" \
        --data_folder="$ROOT/demo_data/LibriSpeech" \
        --output_folder="$OUT" \
        --number_of_epochs="$EPOCHS" --lr="$LR" --lr_encoder="$LR_ENCODER" \
        --precision=fp32 --num_workers=0 --dnn_neurons=256 --test_checkpoint=last \
        --test_beam_search="{beam_size: 8}"
done

test_er() {  # greedy test CER and WER of test set $2 in the train_log.txt of folder $1
    grep -o "test set: $2 - .*" "$1/train_log.txt" | tail -1 | grep -o 'test [CW]ER: [0-9.e+-]*' | paste -sd ' '
}
# The rows of the demo table (tools/demo_table.py): test-clean CER of the
# fine-tuned encoder against the same fine-tuning from random
# initialisation, and the frozen encoder with the same head.
cer() { test_er "$1" test-clean | grep -o 'test CER: [0-9.e+-]*' | grep -o '[0-9.e+-]*$' || echo -; }
mkdir -p "$RESULTS/demo_finetune_$MIXER"
{
    printf 'LibriSpeech ASR fine-tuned whole (CTC), test-clean\tCER %%\t%s\t%s\t-\n' \
        "$(cer "$RESULTS/demo_ft_finetuned_$MIXER")" "$(cer "$RESULTS/demo_ft_random_init_$MIXER")"
    printf 'LibriSpeech ASR, same head on the frozen encoder, test-clean\tCER %%\t%s\t-\t-\n' \
        "$(cer "$RESULTS/demo_ft_frozen_$MIXER")"
} > "$RESULTS/demo_finetune_$MIXER/demo_row.tsv"

echo
echo "Fine-tuning demo ($MIXER demo encoder, $EPOCHS epochs each, greedy decoding):"
for RUN in "${RUNS[@]}"; do
    OUT="$RESULTS/demo_ft_${RUN}_$MIXER"
    printf '%-12s test-clean: %s | test-other: %s\n' "$RUN" \
        "$(test_er "$OUT" test-clean)" "$(test_er "$OUT" test-other)"
done
