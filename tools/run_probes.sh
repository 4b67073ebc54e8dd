#!/usr/bin/env bash
# The MP3S half of the demo: the four downstream probes (LibriSpeech ASR,
# VoxCeleb1 verification, IEMOCAP emotion, SLURP intent) on the frozen demo
# encoder that tools/run_demo.sh pretrained, each on its own demo corpus, with
# the settings of the "Demo" section of the recipe's README. CPU, ~10 minutes.
# Ends with one line per task. MIXER=fastformer picks another demo encoder.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY="$ROOT/.venv/bin/python"
MIXER=${MIXER:-summarymixing}
PRETRAINED=${PRETRAINED:-$ROOT/results/demo_bestrq_$MIXER}
RESULTS=${RESULTS:-$ROOT/results}

if [ ! -d "$PRETRAINED/save" ]; then
    echo "No pretrained demo encoder in $PRETRAINED/save: run 'make demo' (or tools/run_demo.sh) first." >&2
    exit 1
fi
"$PY" "$ROOT/tools/demo_corpus.py" --out "$ROOT/demo_data" --tasks librispeech,voxceleb,iemocap,slurp
# Probe folders from an earlier demo belong to an earlier encoder: start afresh.
rm -rf "$RESULTS/demo_asr_bilstm_$MIXER" "$RESULTS/demo_voxceleb_ecapa_$MIXER" \
    "$RESULTS/demo_iemocap_linear_$MIXER" "$RESULTS/demo_slurp_linear_$MIXER"
COMMON=(--pretrained_path="$PRETRAINED/save")  # the encoder comes from it

echo "== LibriSpeech ASR (BiLSTM + CTC)"
cd "$ROOT/recipes/LibriSpeech/ASR/MP3S"
"$PY" train.py hparams/bilstm_ctc.yaml "${COMMON[@]}" \
    --data_folder="$ROOT/demo_data/LibriSpeech" \
    --output_folder="$RESULTS/demo_asr_bilstm_$MIXER" \
    --number_of_epochs=2 --lstm_hidden=64 --test_beam_search="{beam_size: 8}"

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

echo
echo "MP3S on the demo corpora, frozen $MIXER demo encoder ($PRETRAINED):"
printf '  ASR test-clean (greedy): %s\n' \
    "$(grep -o 'test set: test-clean.*' "$RESULTS/demo_asr_bilstm_$MIXER/train_log.txt" | grep -o 'test WER: [0-9.e+-]*' | tail -1)"
printf '  VoxCeleb1: %s\n' "$(tail -n 1 "$RESULTS/demo_voxceleb_ecapa_$MIXER/verification.txt")"
printf '  IEMOCAP: %s\n' "$(tail -n 1 "$RESULTS/demo_iemocap_linear_$MIXER/cv_accuracy.txt")"
printf '  SLURP: %s\n' "$(head -n 2 "$RESULTS/demo_slurp_linear_$MIXER/test_results.txt" | paste -sd ' ')"
