#!/usr/bin/env bash
# The MP3S half of the demo: the seven downstream tasks of MP3S (ASR on
# LibriSpeech, Buckeye, Common Voice Welsh and Basque; VoxCeleb1
# verification, IEMOCAP emotion, SLURP intent) on the frozen demo encoder
# that tools/run_demo.sh pretrained, each on its own demo corpus, with the
# settings of the "Demo" section of the recipe's README (one probe per task).
#
# Each probe is trained three times, same seed, same epochs (the recipes'
# encoder_init): on the pretrained encoder, on the same encoder at random
# initialisation, and on the fbank features alone. tools/demo_table.py then
# prints one table of the three and says, task by task, whether pretraining
# helped (also written to $RESULTS/demo_table_$MIXER.md).
#
# MIXER=fastformer picks another demo encoder; INITS=pretrained skips the
# baselines; TASKS="asr voxceleb" runs some tasks only (of: asr buckeye
# cv_cy cv_eu voxceleb iemocap slurp); SEED=2 another seed for every probe
# (and so another random-init encoder); PY another Python.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$ROOT/.venv/bin/python}
MIXER=${MIXER:-summarymixing}
PRETRAINED=${PRETRAINED:-$ROOT/results/demo_bestrq_$MIXER}
RESULTS=${RESULTS:-$ROOT/results}
# Absolute: the recipes run from their own folders.
PRETRAINED=$(realpath -m "$PRETRAINED"); RESULTS=$(realpath -m "$RESULTS")
INITS=${INITS:-pretrained random fbank}
TASKS=${TASKS:-asr buckeye cv_cy cv_eu voxceleb iemocap slurp}

if [ ! -d "$PRETRAINED/save" ]; then
    echo "No pretrained demo encoder in $PRETRAINED/save: run 'make demo' (or tools/run_demo.sh) first." >&2
    exit 1
fi
"$PY" "$ROOT/tools/demo_corpus.py" --out "$ROOT/demo_data" --tasks librispeech,buckeye,commonvoice,voxceleb,iemocap,slurp

# The folder of task $1's probe on encoder_init $2 (what demo_table.py reads);
# a folder from an earlier demo belongs to an earlier encoder: emptied.
fresh_folder() {
    local folder="$RESULTS/$1_$MIXER"
    [ "$2" = pretrained ] || folder="${folder}_$2"
    rm -rf "$folder"
    echo "$folder"
}

# CTC needs a few hundred updates to leave the all-blank stage: 8 epochs at
# 10x the MP3S learning rate, and the last epoch tested (the demo WER stays
# near 100%, so "best WER" would pick an early epoch; CER is the signal).
ASR_DEMO=(--number_of_epochs=8 --lr=0.002 --test_checkpoint=last --lstm_hidden=64 "--test_beam_search={beam_size: 8}")
# Common Voice's demo has 72 training clips of ~2 s: 100 BPE pieces trained
# on 66 sentences are each seen a few times, and 18 updates an epoch are too
# few; with characters, batches of 2 (36 updates an epoch) and lr 0.004 the
# fbank probe goes from 100% to ~40% test CER in the same 8 epochs (each
# change alone: 73-84%; see the recipe README's Demo section).
CV_DEMO=(--token_type=char --batch_size=2 --lr=0.004)
for TASK in $TASKS; do
    for INIT in $INITS; do
        COMMON=(--pretrained_path="$PRETRAINED/save" --encoder_init="$INIT")
        [ -z "${SEED:-}" ] || COMMON+=(--seed="$SEED")
        case $TASK in
        asr)
            echo "== LibriSpeech ASR (BiLSTM + CTC), $INIT"
            cd "$ROOT/recipes/LibriSpeech/ASR/MP3S"
            "$PY" train.py hparams/bilstm_ctc.yaml "${COMMON[@]}" "${ASR_DEMO[@]}" \
                --data_folder="$ROOT/demo_data/LibriSpeech" \
                --output_folder="$(fresh_folder demo_asr_bilstm "$INIT")" ;;
        buckeye)
            echo "== Buckeye ASR (BiLSTM + CTC), $INIT"
            cd "$ROOT/recipes/Buckeye/ASR/MP3S"
            OUT_DIR=$(fresh_folder demo_buckeye_bilstm "$INIT")
            "$PY" train.py hparams/bilstm_ctc.yaml "${COMMON[@]}" "${ASR_DEMO[@]}" \
                --data_folder="$ROOT/demo_data/Buckeye" \
                --output_folder="$OUT_DIR" --extract_folder="$OUT_DIR/tracks" ;;
        cv_cy | cv_eu)
            LANGUAGE=${TASK#cv_}
            echo "== Common Voice $LANGUAGE ASR (BiLSTM + CTC), $INIT"
            cd "$ROOT/recipes/CommonVoice/ASR/MP3S"
            "$PY" train.py hparams/bilstm_ctc.yaml "${COMMON[@]}" "${ASR_DEMO[@]}" "${CV_DEMO[@]}" \
                --language="$LANGUAGE" \
                --data_folder="$ROOT/demo_data/CommonVoice/cv-corpus-11.0-2022-09-21/$LANGUAGE" \
                --output_folder="$(fresh_folder "demo_cv_${LANGUAGE}_bilstm" "$INIT")" ;;
        voxceleb)
            echo "== VoxCeleb1 speaker verification (ECAPA), $INIT"
            cd "$ROOT/recipes/VoxCeleb/SpeakerVerification"
            "$PY" train.py hparams/ecapa.yaml "${COMMON[@]}" \
                --data_folder="$ROOT/demo_data/VoxCeleb1" \
                --output_folder="$(fresh_folder demo_voxceleb_ecapa "$INIT")" \
                --number_of_epochs=6 --out_n_neurons=24 \
                "--channels=[64, 64, 64, 64, 192]" --emb_dim=64 \
                "--train_dataloader_opts={batch_size: 8, shuffle: True, num_workers: 0, drop_last: True}" ;;
        iemocap)
            echo "== IEMOCAP emotion (linear, 10-fold cross-validation), $INIT"
            cd "$ROOT/recipes/IEMOCAP/EmotionRecognition"
            "$PY" train.py hparams/linear.yaml "${COMMON[@]}" --test_spk_id=all \
                --data_folder="$ROOT/demo_data/IEMOCAP_full_release" \
                --experiment_folder="$(fresh_folder demo_iemocap_linear "$INIT")" \
                --number_of_epochs=5 --lr=0.005 \
                "--train_dataloader_opts={batch_size: 4, shuffle: True, num_workers: 0}" ;;
        slurp)
            echo "== SLURP intent (linear), $INIT"
            cd "$ROOT/recipes/SLURP/IntentClassification"
            "$PY" train.py hparams/linear.yaml "${COMMON[@]}" \
                --data_folder="$ROOT/demo_data/SLURP" \
                --output_folder="$(fresh_folder demo_slurp_linear "$INIT")" \
                --n_scenarios=4 --number_of_epochs=8 --lr=0.01 \
                "--train_dataloader_opts={batch_size: 4, num_workers: 0}" ;;
        *)
            echo "Unknown task $TASK in TASKS (asr buckeye cv_cy cv_eu voxceleb iemocap slurp)" >&2
            exit 1 ;;
        esac
    done
done

if [ "${TABLE:-1}" != 0 ]; then  # (TABLE=0: tools/compare_mixers.sh prints its own)
    echo
    "$PY" "$ROOT/tools/demo_table.py" --results "$RESULTS" --mixer "$MIXER" \
        --markdown "$RESULTS/demo_table_$MIXER.md"
fi
