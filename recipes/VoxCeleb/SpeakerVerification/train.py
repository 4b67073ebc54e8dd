#!/usr/bin/env python3
"""MP3S VoxCeleb1 speaker verification on a frozen BEST-RQ encoder.

A speaker-embedding probe (ECAPA-TDNN or X-vector) reads the learned
softmax-weighted sum of all hidden layers of a frozen BEST-RQ encoder (any
token mixer) and is trained as a speaker classifier on VoxCeleb1 dev with an
AAM-softmax (margin 0.2, scale 30), as the MP3S benchmark trains it: one
training row per 3-s chunk of each utterance, each row a random 3-s crop of
its utterance; the probe's learning rate decays linearly from 1e-3 to 1e-4
over the 15 epochs, the layer weights keep theirs (0.01). The model of the
last epoch (``test_checkpoint: last``; ``best``: the lowest dev error) then
embeds the enrolment and test files of the Vox1-O trial list
(veri_test2.txt); trials are scored by cosine similarity, and the EER and
minDCF (p_target 0.01, also normalised) are printed and written to
``<output_folder>/verification.txt`` and ``train_log.txt``.

To run this recipe:

    python train.py hparams/ecapa.yaml \\
        --data_folder=/path/to/VoxCeleb1 \\
        --pretrained_path=/path/to/bestrq_summarymixing/1000/save

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import os
import sys

import speechbrain as sb
import torch
from speechbrain.utils.distributed import if_main_process, run_on_main
from speechbrain.utils.logger import get_logger

from lobes.recipe import parse_arguments
from lobes.dataio.audio import load_audio, load_audio_crop
from lobes.brains.probing import ProbeBrain, checkpoint_to_test
from lobes.dataio.manifest import dataset_from_csv
from lobes.recipe import load_hparams, lock_output_folder, record_encoder
from lobes.utils.metrics import EER, minDCF  # SpeechBrain's values, by sorting

logger = get_logger(__name__)
# Keys every YAML of this recipe defines (another recipe's YAML is refused).
REQUIRED_KEYS = ("pretrained_path", "weighted_ssl", "verification_file", "sentence_len", "embedding_model")


class SpeakerBrain(ProbeBrain):
    """Speaker classifier (AAM-softmax) on the weighted layer sum; embeds
    and scores verification trials."""

    def compute_forward(self, batch, stage):
        """Cosine scores against every training speaker, (B, 1, n_spk)."""
        batch = batch.to(self.device)
        wavs, lens = batch.sig
        embeddings = self.embed_batch(wavs, lens, batch.id)
        return self.modules.classifier(embeddings), lens

    def embed_batch(self, wavs, lens, ids=None):
        """Speaker embeddings (B, 1, emb_dim) of waveforms (B, S)."""
        feats = self.encode(wavs, lens, ids)
        return self.modules.embedding_model(feats, lens)

    def compute_objectives(self, predictions, batch, stage):
        """AAM-softmax loss; accumulates the classification error."""
        predictions, lens = predictions
        spkid, _ = batch.spk_id_encoded
        loss = self.hparams.compute_cost(predictions, spkid, lens)
        self.error_metrics.append(batch.id, predictions, spkid, lens)
        return loss

    def on_stage_start(self, stage, epoch=None):
        """Resets the classification-error statistics (to the checkpointed
        ones when training resumes mid-epoch)."""
        self.error_metrics = self.hparams.error_stats()
        if stage == sb.Stage.TRAIN:
            self.restore_train_stats()

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Logs loss, accuracy and layer weights; anneals the learning rates
        (MP3S: linearly by epoch); keeps the latest and the best checkpoint."""
        error = self.error_metrics.summarize("average")
        stats = {"loss": stage_loss, "error_rate": error, "accuracy": 1.0 - error}
        if stage == sb.Stage.TRAIN:
            self.train_stats = stats
            return
        if stage == sb.Stage.VALID:
            lrs = self.anneal(error, epoch)
            weights = " ".join(f"{w:.4f}" for w in self.layer_weights_summary())
            self.hparams.train_logger.log_stats(
                stats_meta={"epoch": epoch, **lrs, "layer_weights": weights},
                train_stats=self.train_stats,
                valid_stats=stats,
            )
            self.checkpointer.save_and_keep_only(
                meta={"error_rate": error}, min_keys=["error_rate"]
            )

    def embed_dataset(self, dataset, loader_opts):
        """Embeddings {ID: (emb_dim,)} of every utterance of ``dataset``."""
        loader = self.make_dataloader(dataset, sb.Stage.TEST, **loader_opts)
        self.modules.eval()
        embeddings = {}
        with torch.no_grad():
            for batch in loader:
                batch = batch.to(self.device)
                wavs, lens = batch.sig
                emb = self.embed_batch(wavs, lens, batch.id).squeeze(1).float().cpu()
                embeddings.update(zip(batch.id, emb))
        return embeddings

    def verify(self, enrol_data, test_data, trials):
        """Cosine-scores ``trials`` [(label, enrol ID, test ID)] with the
        ``test_checkpoint`` model; returns (EER, minDCF) as fractions."""
        self.checkpointer.recover_if_possible(
            **checkpoint_to_test(self.hparams.test_checkpoint, "error_rate")
        )
        opts = self.hparams.embed_dataloader_opts
        embeddings = self.embed_dataset(enrol_data, opts)
        embeddings.update(self.embed_dataset(test_data, opts))
        positive, negative, lines = [], [], []
        for label, enrol, test in trials:
            score = float(
                torch.nn.functional.cosine_similarity(
                    embeddings[enrol], embeddings[test], dim=0, eps=1e-6
                )
            )
            (positive if label == 1 else negative).append(score)
            lines.append(f"{enrol} {test} {label} {score:.6f}")
        if not positive or not negative:
            raise ValueError(
                "The trial list needs target (1) and non-target (0) trials "
                f"to compute an EER: it has {len(positive)} and {len(negative)}."
            )
        if if_main_process():
            with open(self.hparams.scores_file, "w", encoding="utf-8") as f:
                f.write("\n".join(lines) + "\n")
        eer, _ = EER(torch.tensor(positive), torch.tensor(negative))
        p_target = self.hparams.dcf_p_target
        min_dcf, _ = minDCF(
            torch.tensor(positive), torch.tensor(negative), p_target=p_target
        )
        return float(eer), float(min_dcf)


def add_classifier(hparams):
    """Builds the speaker classifier chosen by ``classifier_head`` among the
    ``classifier_heads`` partials of the YAML, with ``out_n_neurons``
    outputs, and adds it to ``model`` and ``modules``.

    MP3S's ECAPA-TDNN probe ends in a cosine classifier
    (``ECAPA_TDNN.Classifier``), the input the AAM-softmax loss expects; its
    X-vector probe ends in ``Xvector.Classifier``, whose *log-softmax* goes
    to the same loss (``classifier_head: mp3s`` reproduces it).
    """
    heads = hparams["classifier_heads"]
    name = hparams["classifier_head"]
    if name not in heads:
        raise ValueError(
            f"classifier_head: {name!r} in the YAML; this probe's "
            f"classifier_heads are: {', '.join(heads)}."
        )
    classifier = heads[name](out_neurons=hparams["out_n_neurons"])
    hparams["model"].append(classifier)
    hparams["modules"]["classifier"] = classifier


def dataio_prepare(hparams):
    """Train/dev datasets (3-s crops, speaker labels) and enrol/test datasets
    (whole utterances). Returns (train, valid, enrol, test, label_encoder).

    A training row (one chunk, see ``voxceleb_prepare``) is a random
    ``sentence_len`` crop anywhere in its utterance (``random_chunk: True``,
    MP3S) or the chunk itself (``False``); a dev row is always its own chunk,
    so that the dev error is the same at every epoch.
    """
    save = hparams["save_folder"]
    datasets = {
        name: dataset_from_csv(  # checked first: columns, IDs, files
            os.path.join(save, f"{name}.csv"),
            ("ID", "duration", "wav", "start", "stop", "spk_id"),
            number_columns=("duration", "start", "stop"),
        )
        for name in ("train", "dev", "enrol", "test")
    }
    sample_rate = hparams["sample_rate"]
    seconds = hparams["sentence_len"]

    random_chunk = hparams["random_chunk"]

    # A training row (one chunk) is a random crop anywhere in its utterance
    # (MP3S) or the chunk itself. Crops are placed with each file's own
    # sample rate and length, then resampled (an 8 kHz file gives a 3-s crop
    # too); chunk bounds are the file's own samples (voxceleb_prepare).
    @sb.utils.data_pipeline.takes("wav", "start", "stop")
    @sb.utils.data_pipeline.provides("sig")
    def train_audio(wav, start, stop):
        if random_chunk:
            return load_audio_crop(wav, seconds, sample_rate, "random")
        return load_audio({"file": wav, "start": start, "stop": stop}, sample_rate)

    @sb.utils.data_pipeline.takes("wav", "start", "stop")
    @sb.utils.data_pipeline.provides("sig")
    def chunk_audio(wav, start, stop):
        return load_audio({"file": wav, "start": start, "stop": stop}, sample_rate)

    @sb.utils.data_pipeline.takes("wav")
    @sb.utils.data_pipeline.provides("sig")
    def full_audio(wav):
        return load_audio(wav, sample_rate)

    label_encoder = sb.dataio.encoder.CategoricalEncoder()

    @sb.utils.data_pipeline.takes("spk_id")
    @sb.utils.data_pipeline.provides("spk_id", "spk_id_encoded")
    def label_pipeline(spk_id):
        yield spk_id
        yield label_encoder.encode_sequence_torch([spk_id])

    sb.dataio.dataset.add_dynamic_item([datasets["train"]], train_audio)
    sb.dataio.dataset.add_dynamic_item([datasets["dev"]], chunk_audio)
    sb.dataio.dataset.add_dynamic_item([datasets["enrol"], datasets["test"]], full_audio)
    sb.dataio.dataset.add_dynamic_item([datasets["train"], datasets["dev"]], label_pipeline)
    label_encoder.load_or_create(
        path=os.path.join(save, "label_encoder.txt"),
        from_didatasets=[datasets["train"]],
        output_key="spk_id",
    )
    n_spk = len(label_encoder)
    if n_spk != hparams["out_n_neurons"]:
        raise ValueError(
            f"out_n_neurons is {hparams['out_n_neurons']} in the YAML but "
            f"{os.path.join(save, 'train.csv')} has {n_spk} training speakers: "
            f"run with --out_n_neurons={n_spk}."
        )
    for name in ("train", "dev"):
        sb.dataio.dataset.set_output_keys([datasets[name]], ["id", "sig", "spk_id_encoded"])
    for name in ("enrol", "test"):
        sb.dataio.dataset.set_output_keys([datasets[name]], ["id", "sig"])
        datasets[name] = datasets[name].filtered_sorted(sort_key="duration")
    return (datasets["train"], datasets["dev"], datasets["enrol"],
            datasets["test"], label_encoder)


if __name__ == "__main__":
    hparams_file, run_opts, overrides = parse_arguments(sys.argv[1:])
    sb.utils.distributed.ddp_init_group(run_opts)
    hparams, overrides = load_hparams(hparams_file, overrides, REQUIRED_KEYS)
    checkpoint_to_test(hparams["test_checkpoint"], "error_rate")  # a typo fails now
    lock_output_folder(hparams["output_folder"])  # one run per folder
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )
    record_encoder(hparams)

    from voxceleb_prepare import prepare_voxceleb, read_trials  # noqa: E402

    run_on_main(
        prepare_voxceleb,
        kwargs={
            "data_folder": hparams["data_folder"],
            "save_folder": hparams["save_folder"],
            "verification_file": hparams["verification_file"],
            "split_ratio": hparams["split_ratio"],
            "seg_dur": hparams["sentence_len"],
            "amp_th": hparams["amp_th"],
            "seed": hparams["seed"],
            "skip_prep": hparams["skip_prep"],
            "check_audio": hparams["check_audio"],
            "skip_bad_audio": hparams["skip_bad_audio"],
        },
    )
    train_data, valid_data, enrol_data, test_data, _ = dataio_prepare(hparams)
    add_classifier(hparams)
    hparams["weighted_ssl"].load_pretrained(hparams["pretrained_path"])

    brain = SpeakerBrain(
        modules=hparams["modules"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    brain.fit(
        brain.hparams.epoch_counter,
        train_data,
        valid_data,
        train_loader_kwargs=hparams["train_dataloader_opts"],
        valid_loader_kwargs=hparams["valid_dataloader_opts"],
    )

    trials = [
        (label, enrol[: -len(".wav")], test[: -len(".wav")])
        for label, enrol, test in read_trials(hparams["verification_file"])
    ]
    # trials whose files the preparation skipped (skip_bad_audio) are left out
    prepared = set(enrol_data.data_ids) | set(test_data.data_ids)
    kept = [t for t in trials if t[1] in prepared and t[2] in prepared]
    if len(kept) < len(trials):
        logger.warning(
            f"{len(trials) - len(kept)} of {len(trials)} trials left out: the "
            "preparation skipped their audio files (skip_bad_audio)."
        )
    trials = kept
    eer, min_dcf = brain.verify(enrol_data, test_data, trials)
    # minDCF as SpeechBrain computes it, and normalised by the cost of the
    # best trivial system, min(p_target, 1 - p_target) (the usual report)
    p_target = hparams["dcf_p_target"]
    min_dcf_norm = min_dcf / min(p_target, 1 - p_target)
    summary = (
        f"EER: {eer * 100:.2f}%, minDCF: {min_dcf:.5f} (p_target {p_target}; "
        f"normalised: {min_dcf_norm:.4f}) ({len(trials)} trials)"
    )
    logger.info(summary)
    print(summary)
    # every rank calls the logger: it writes on the main process only and
    # then broadcasts, so a call from the main process alone would hang DDP
    brain.hparams.train_logger.log_stats(
        stats_meta={
            f"scored epoch ({hparams['test_checkpoint']})": brain.hparams.epoch_counter.current
        },
        test_stats={"EER": eer * 100, "minDCF": min_dcf, "minDCF_norm": min_dcf_norm},
    )
    if if_main_process():
        with open(hparams["verification_results"], "w", encoding="utf-8") as f:
            f.write(summary + "\n")
