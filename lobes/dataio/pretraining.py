"""The pretraining data pipeline: manifests to audio items (whole files or
segments of long ones) and the training loader options.

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import speechbrain as sb

from lobes.dataio.audio import filter_by_duration, load_audio
from lobes.dataio.batching import train_loader_kwargs
from lobes.dataio.manifest import dataset_from_csv


def dataio_prepare(hparams):
    """Builds the pretraining datasets and loader options from CSV manifests.

    The CSVs (``train_csv``, ``valid_csv``) need ``ID``, ``duration`` and
    ``wav`` columns; ``wav`` is a path, or a segment of a long file when the
    CSV also has ``start`` and ``stop`` (LibriLight).

    Returns
    -------
    train_data, valid_data : DynamicItemDataset
        Items with ``id`` and ``sig``.
    train_loader_kwargs : dict
        Dynamic batching by total duration when ``dynamic_batching`` is set.
    """
    datasets = {}
    for split in ("train", "valid"):
        data = dataset_from_csv(  # checked first: columns, IDs, files
            hparams[f"{split}_csv"], number_columns=("duration", "start", "stop")
        )
        data = filter_by_duration(
            data,
            f"{split} ({hparams[f'{split}_csv']})",
            hparams["avoid_if_shorter_than"],
            hparams["avoid_if_longer_than"],
            sort_key="duration",
        )
        if len(data) == 0:
            raise ValueError(
                f"{hparams[f'{split}_csv']} has no utterance between "
                f"{hparams['avoid_if_shorter_than']} s and "
                f"{hparams['avoid_if_longer_than']} s: check the data "
                "preparation or the `avoid_if_*` keys of the YAML."
            )
        datasets[split] = data

    sample_rate = hparams["sample_rate"]

    @sb.utils.data_pipeline.takes("wav", "start", "stop")
    @sb.utils.data_pipeline.provides("sig")
    def segment_pipeline(wav, start, stop):
        return load_audio(
            {"file": wav, "start": int(start), "stop": int(stop)}, sample_rate
        )

    @sb.utils.data_pipeline.takes("wav")
    @sb.utils.data_pipeline.provides("sig")
    def audio_pipeline(wav):
        return load_audio(wav, sample_rate)

    for data in datasets.values():
        first = data.data[data.data_ids[0]]
        pipeline = segment_pipeline if "start" in first else audio_pipeline
        sb.dataio.dataset.add_dynamic_item([data], pipeline)
        sb.dataio.dataset.set_output_keys([data], ["id", "sig"])

    loader_kwargs = train_loader_kwargs(hparams, datasets["train"])
    return datasets["train"], datasets["valid"], loader_kwargs
