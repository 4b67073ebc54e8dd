#!/usr/bin/env bash
# The MP3S half of the demo: the seven downstream tasks of MP3S (ASR on
# LibriSpeech, Buckeye, Common Voice Welsh and Basque; VoxCeleb1
# verification, IEMOCAP emotion, SLURP intent) on the frozen demo encoder
# that tools/run_demo.sh pretrained, each on its own demo corpus, with the
# settings of the "Demo" section of the recipe's README (one probe per task).
# CPU, ~15 minutes. Ends with one line per task, seven in all.
# MIXER=fastformer picks another demo encoder; PY another Python.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$ROOT/.venv/bin/python}
MIXER=${MIXER:-summarymixing}
PRETRAINED=${PRETRAINED:-$ROOT/results/demo_bestrq_$MIXER}
RESULTS=${RESULTS:-$ROOT/results}

if [ ! -d "$PRETRAINED/save" ]; then
    echo "No pretrained demo encoder in $PRETRAINED/save: run 'make demo' (or tools/run_demo.sh) first." >&2
    exit 1
fi
"$PY" "$ROOT/tools/demo_corpus.py" --out "$ROOT/demo_data" --tasks librispeech,buckeye,commonvoice,voxceleb,iemocap,slurp
# Probe folders from an earlier demo belong to an earlier encoder: start afresh.
rm -rf "$RESULTS/demo_asr_bilstm_$MIXER" "$RESULTS/demo_buckeye_bilstm_$MIXER" \
    "$RESULTS/demo_cv_cy_bilstm_$MIXER" "$RESULTS/demo_cv_eu_bilstm_$MIXER" \
    "$RESULTS/demo_voxceleb_ecapa_$MIXER" \
    "$RESULTS/demo_iemocap_linear_$MIXER" "$RESULTS/demo_slurp_linear_$MIXER"
COMMON=(--pretrained_path="$PRETRAINED/save")  # the encoder comes from it

echo "== LibriSpeech ASR (BiLSTM + CTC)"
cd "$ROOT/recipes/LibriSpeech/ASR/MP3S"
"$PY" train.py hparams/bilstm_ctc.yaml "${COMMON[@]}" \
    --data_folder="$ROOT/demo_data/LibriSpeech" \
    --output_folder="$RESULTS/demo_asr_bilstm_$MIXER" \
    --number_of_epochs=2 --lstm_hidden=64 --test_beam_search="{beam_size: 8}"

echo "== Buckeye ASR (BiLSTM + CTC)"
cd "$ROOT/recipes/Buckeye/ASR/MP3S"
"$PY" train.py hparams/bilstm_ctc.yaml "${COMMON[@]}" \
    --data_folder="$ROOT/demo_data/Buckeye" \
    --output_folder="$RESULTS/demo_buckeye_bilstm_$MIXER" \
    --extract_folder="$RESULTS/demo_buckeye_bilstm_$MIXER/tracks" \
    --number_of_epochs=2 --lstm_hidden=64 --test_beam_search="{beam_size: 8}"

for LANGUAGE in cy eu; do
    echo "== Common Voice $LANGUAGE ASR (BiLSTM + CTC)"
    cd "$ROOT/recipes/CommonVoice/ASR/MP3S"
    "$PY" train.py hparams/bilstm_ctc.yaml "${COMMON[@]}" --language=$LANGUAGE \
        --data_folder="$ROOT/demo_data/CommonVoice/cv-corpus-11.0-2022-09-21/$LANGUAGE" \
        --output_folder="$RESULTS/demo_cv_${LANGUAGE}_bilstm_$MIXER" \
        --number_of_epochs=2 --lstm_hidden=64 --test_beam_search="{beam_size: 8}"
done

echo "== VoxCeleb1 speaker verification (ECAPA)"
cd "$ROOT/recipes/VoxCeleb/SpeakerVerification"
"$PY" train.py hparams/ecapa.yaml "${COMMON[@]}" \
    --data_folder="$ROOT/demo_data/VoxCeleb1" \
    --output_folder="$RESULTS/demo_voxceleb_ecapa_$MIXER" \
    --number_of_epochs=6 --out_n_neurons=8 \
    "--channels=[64, 64, 64, 64, 192]" --emb_dim=64 \
    "--train_dataloader_opts={batch_size: 8, shuffle: True, num_workers: 0}"

echo "== IEMOCAP emotion (linear, 10-fold cross-validation)"
cd "$ROOT/recipes/IEMOCAP/EmotionRecognition"
"$PY" train.py hparams/linear.yaml "${COMMON[@]}" --test_spk_id=all \
    --data_folder="$ROOT/demo_data/IEMOCAP_full_release" \
    --experiment_folder="$RESULTS/demo_iemocap_linear_$MIXER" \
    --number_of_epochs=10 --lr=0.005 \
    "--train_dataloader_opts={batch_size: 4, shuffle: True, num_workers: 0}"

echo "== SLURP intent (linear)"
cd "$ROOT/recipes/SLURP/IntentClassification"
"$PY" train.py hparams/linear.yaml "${COMMON[@]}" \
    --data_folder="$ROOT/demo_data/SLURP" \
    --output_folder="$RESULTS/demo_slurp_linear_$MIXER" \
    --n_scenarios=4 --number_of_epochs=8 --lr=0.01 \
    "--train_dataloader_opts={batch_size: 4, num_workers: 0}"

test_wer() {  # the greedy test WER and CER of test set $2 in the train_log.txt of folder $1
    grep -o "test set: $2,.*" "$1/train_log.txt" | tail -1 | grep -o 'test [WC]ER: [0-9.e+-]*' | paste -sd ' '
}
echo
echo "MP3S on the demo corpora, frozen $MIXER demo encoder ($PRETRAINED):"
printf '  LibriSpeech ASR test-clean (greedy): %s\n' "$(test_wer "$RESULTS/demo_asr_bilstm_$MIXER" test-clean)"
printf '  Buckeye ASR test (greedy): %s\n' "$(test_wer "$RESULTS/demo_buckeye_bilstm_$MIXER" test)"
printf '  Common Voice cy ASR test (greedy): %s\n' "$(test_wer "$RESULTS/demo_cv_cy_bilstm_$MIXER" test)"
printf '  Common Voice eu ASR test (greedy): %s\n' "$(test_wer "$RESULTS/demo_cv_eu_bilstm_$MIXER" test)"
printf '  VoxCeleb1: %s\n' "$(tail -n 1 "$RESULTS/demo_voxceleb_ecapa_$MIXER/verification.txt")"
printf '  IEMOCAP: %s\n' "$(tail -n 1 "$RESULTS/demo_iemocap_linear_$MIXER/cv_accuracy.txt")"
printf '  SLURP: %s\n' "$(head -n 2 "$RESULTS/demo_slurp_linear_$MIXER/test_results.txt" | paste -sd ' ')"
