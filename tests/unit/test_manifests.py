"""A manifest prepared earlier is checked before training (issue 21):
missing columns, duplicate IDs, missing audio files and bad durations are
named with the CSV and the row, in every recipe's data loading."""

import re

import numpy as np
import pytest
import soundfile as sf

from lobes.dataio.asr import load_datasets
from lobes.dataio.manifest import check_manifest, dataset_from_csv
from lobes.dataio.pretraining import dataio_prepare


@pytest.fixture
def wavs(tmp_path):
    paths = []
    for i in range(3):
        path = tmp_path / f"u{i}.wav"
        sf.write(path, np.zeros(16000, dtype="float32"), 16000)
        paths.append(path)
    return paths


def write(path, header, rows):
    path.write_text("\n".join([",".join(header), *(",".join(map(str, r)) for r in rows)]) + "\n")
    return path


def pretraining_hparams(train_csv, valid_csv):
    return {"train_csv": str(train_csv), "valid_csv": str(valid_csv),
            "avoid_if_shorter_than": 0.0, "avoid_if_longer_than": 100.0}


def test_a_reused_csv_without_its_duration_column_is_named(tmp_path, wavs):
    train = write(tmp_path / "train.csv", ["ID", "wav"], [[f"u{i}", w] for i, w in enumerate(wavs)])
    with pytest.raises(ValueError, match=rf"{re.escape(str(train))} \(a manifest prepared earlier\) "
                                         r"cannot be used: no column duration \(its columns: ID, wav\)"):
        dataio_prepare(pretraining_hparams(train, train))


def test_duplicate_ids_are_named_with_the_csv_and_rows(tmp_path, wavs):
    rows = [["u0", 1.0, wavs[0]], ["u1", 1.0, wavs[1]], ["u0", 1.0, wavs[2]]]
    train = write(tmp_path / "train.csv", ["ID", "duration", "wav"], rows)
    with pytest.raises(ValueError, match=rf"{re.escape(str(train))} .*row 4: ID 'u0' already in row 2"):
        dataio_prepare(pretraining_hparams(train, train))


def test_missing_files_and_bad_values_are_named_by_row(tmp_path, wavs):
    rows = [["a", 1.0, wavs[0], "hi"], ["b", "long", wavs[1], "hi"], ["c", 1.0, tmp_path / "gone.wav", "x"],
            ["d", 1.0, wavs[2]]]
    train = write(tmp_path / "train.csv", ["ID", "duration", "wav", "wrd"], rows)
    hparams = {"train_csv": str(train), "valid_csv": str(train), "test_csv": [],
               "avoid_if_shorter_than": 0.0, "avoid_if_longer_than": 100.0, "sorting": "random",
               "train_dataloader_opts": {}}
    with pytest.raises(ValueError) as err:
        load_datasets(hparams)  # the ASR recipes' (LibriSpeech, Buckeye, Common Voice)
    message = str(err.value)
    assert str(train) in message
    assert "row 3: duration 'long' is not a number" in message
    assert f"row 4: {tmp_path / 'gone.wav'} does not exist" in message
    assert "row 5: 3 values for 4 columns" in message


def test_a_good_manifest_loads_and_replacements_apply(tmp_path, wavs):
    train = write(tmp_path / "train.csv", ["ID", "duration", "wav"],
                  [[f"u{i}", 1.0, f"$root/{w.name}"] for i, w in enumerate(wavs)])
    data = dataset_from_csv(train, replacements={"root": str(tmp_path)})
    assert len(data) == 3
    with pytest.raises(ValueError, match=r"row 2: \$root/u0.wav does not exist"):
        check_manifest(train)
