#!/usr/bin/env python3
"""MP3S IEMOCAP emotion recognition on a frozen BEST-RQ encoder.

A probe reads the learned softmax-weighted sum of all hidden layers of a
frozen BEST-RQ encoder (any token mixer) and classifies each turn into 4
emotions (neutral, happy+excited, sad, angry): mean pooling + linear layer
(``hparams/linear.yaml``) or ECAPA-TDNN (``hparams/ecapa.yaml``). One run is
one fold of the MP3S speaker-independent 10-fold cross-validation: speaker
``test_spk_id`` is the test set, the other speaker of its session the
validation set. The checkpoint with the lowest validation error is tested;
its accuracy goes to ``<output_folder>/test_accuracy.txt``.

One fold:

    python train.py hparams/linear.yaml --test_spk_id=1 \\
        --data_folder=/path/to/IEMOCAP_full_release \\
        --pretrained_path=/path/to/bestrq_summarymixing/1000/save

All folds of ``cv_folds`` one after the other in this process (resumable:
a finished fold is only re-tested), then the mean test accuracy, written to
``<experiment_folder>/cv_accuracy.txt``: the same command with
``--test_spk_id=all``. Each fold loads its hyperparameters (and so its seed)
afresh, as a fold run alone: the same accuracies as one process per fold,
without ~5 s of start-up per fold.

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import os
import sys
import tempfile

import speechbrain as sb
from speechbrain.utils.distributed import if_main_process, run_on_main
from speechbrain.utils.logger import get_logger

from lobes.recipe import parse_arguments
from lobes.dataio.audio import load_audio
from lobes.brains.probing import ProbeBrain
from lobes.recipe import load_hparams, lock_output_folder, record_encoder
from lobes.utils.run_lock import release_output_folder

logger = get_logger(__name__)
# Keys every YAML of this recipe defines (another recipe's YAML is refused).
REQUIRED_KEYS = ("pretrained_path", "weighted_ssl", "cv_folds", "test_spk_id", "n_classes")


class EmotionBrain(ProbeBrain):
    """4-class emotion probe: mean-pool + linear (``output_mlp``) or
    ECAPA-TDNN (``embedding_model`` + ``classifier``), log-softmax + NLL."""

    def compute_forward(self, batch, stage):
        """Log-probabilities of the 4 classes, (B, 1, 4)."""
        batch = batch.to(self.device)
        wavs, lens = batch.sig
        feats = self.encode(wavs, lens, batch.id)
        if hasattr(self.modules, "embedding_model"):
            outputs = self.modules.classifier(self.modules.embedding_model(feats, lens))
        else:
            pooled = self.hparams.avg_pool(feats, lens)  # (B, 1, D)
            outputs = self.modules.output_mlp(pooled)
        return self.hparams.log_softmax(outputs)

    def compute_objectives(self, predictions, batch, stage):
        """NLL loss; accumulates the classification error."""
        emo, _ = batch.emo_encoded
        loss = self.hparams.compute_cost(predictions, emo)
        self.error_metrics.append(batch.id, predictions, emo)
        return loss

    def on_stage_start(self, stage, epoch=None):
        """Resets the classification-error statistics (to the checkpointed
        ones when training resumes mid-epoch)."""
        self.error_metrics = self.hparams.error_stats()
        if stage == sb.Stage.TRAIN:
            self.restore_train_stats()

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Logs loss, accuracy and layer weights; anneals on the validation
        error; keeps the best checkpoint; writes the test accuracy."""
        error = self.error_metrics.summarize("average")
        stats = {"loss": stage_loss, "error_rate": error, "accuracy": 1.0 - error}
        weights = " ".join(f"{w:.4f}" for w in self.layer_weights_summary())
        if stage == sb.Stage.TRAIN:
            self.train_stats = stats
        elif stage == sb.Stage.VALID:
            lrs = self.anneal(error)
            self.hparams.train_logger.log_stats(
                stats_meta={"epoch": epoch, **lrs, "layer_weights": weights},
                train_stats=self.train_stats,
                valid_stats=stats,
            )
            self.checkpointer.save_and_keep_only(
                meta={"error_rate": error}, min_keys=["error_rate"]
            )
        else:
            self.hparams.train_logger.log_stats(
                stats_meta={
                    "fold (test speaker)": self.hparams.test_spk_id,
                    "best epoch": self.hparams.epoch_counter.current,
                    "layer_weights": weights,
                },
                test_stats=stats,
            )
            summary = (
                f"Fold {self.hparams.test_spk_id}: test accuracy "
                f"{100 * (1.0 - error):.2f}% ({len(self.error_metrics.ids)} turns)"
            )
            print(summary)
            if if_main_process():
                with open(self.hparams.test_results, "w", encoding="utf-8") as f:
                    f.write(f"accuracy: {1.0 - error:.6f}\n{summary}\n")


def dataio_prepare(hparams):
    """Train/valid/test datasets of the fold (whole turns, emotion labels)."""
    datasets = {}
    for split in ("train", "valid", "test"):
        datasets[split] = sb.dataio.dataset.DynamicItemDataset.from_json(
            json_path=os.path.join(hparams["output_folder"], f"{split}.json")
        )
    data = list(datasets.values())

    @sb.utils.data_pipeline.takes("wav")
    @sb.utils.data_pipeline.provides("sig")
    def audio_pipeline(wav):
        return load_audio(wav, hparams["sample_rate"])

    label_encoder = sb.dataio.encoder.CategoricalEncoder()

    @sb.utils.data_pipeline.takes("emo")
    @sb.utils.data_pipeline.provides("emo", "emo_encoded")
    def label_pipeline(emo):
        yield emo
        yield label_encoder.encode_label_torch(emo)

    sb.dataio.dataset.add_dynamic_item(data, audio_pipeline)
    sb.dataio.dataset.add_dynamic_item(data, label_pipeline)
    label_encoder.load_or_create(
        path=os.path.join(hparams["save_folder"], "label_encoder.txt"),
        from_didatasets=[datasets["train"]],
        output_key="emo",
    )
    label_encoder.expect_len(hparams["n_classes"])
    sb.dataio.dataset.set_output_keys(data, ["id", "sig", "emo_encoded"])
    return datasets["train"], datasets["valid"], datasets["test"]


def run_fold(argv):
    """Trains and tests one fold (``argv``: the command-line arguments);
    returns its output folder."""
    hparams_file, run_opts, overrides = parse_arguments(argv)
    sb.utils.distributed.ddp_init_group(run_opts)
    hparams, overrides = load_hparams(hparams_file, overrides, REQUIRED_KEYS)
    lock_output_folder(hparams["output_folder"])  # one run per folder
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )
    record_encoder(hparams)

    from iemocap_prepare import prepare_iemocap  # noqa: E402

    run_on_main(
        prepare_iemocap,
        kwargs={
            "data_folder": hparams["data_folder"],
            "save_folder": hparams["output_folder"],
            "test_spk_id": hparams["test_spk_id"],
            "speaker_assignment": hparams["speaker_assignment"],
            "skip_prep": hparams["skip_prep"],
            "check_audio": hparams["check_audio"],
            "skip_bad_audio": hparams["skip_bad_audio"],
        },
    )
    train_data, valid_data, test_data = dataio_prepare(hparams)
    hparams["weighted_ssl"].load_pretrained(hparams["pretrained_path"])

    brain = EmotionBrain(
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
    brain.evaluate(
        test_data,
        min_key="error_rate",
        test_loader_kwargs=hparams["test_dataloader_opts"],
    )
    return hparams["output_folder"]


def run_all_folds(argv):
    """Runs every fold of ``cv_folds`` in turn (a finished fold is only
    re-tested), then writes and prints the mean test accuracy."""
    argv = list(argv)
    if "--test_spk_id" in argv:  # "--test_spk_id all"
        i = argv.index("--test_spk_id")
        del argv[i : i + 2]
    argv = [a for a in argv if not a.startswith("--test_spk_id=")]
    hparams_file, _, overrides = parse_arguments(argv)
    with tempfile.TemporaryDirectory() as tmp:  # no checkpoint folder of a fold
        hparams, _ = load_hparams(
            hparams_file, f"{overrides or ''}\nsave_folder: {tmp}\n", REQUIRED_KEYS
        )
    experiment = hparams["experiment_folder"]
    accuracies = {}
    for fold in hparams["cv_folds"]:
        release_output_folder(run_fold([*argv, f"--test_spk_id={fold}"]))
        result = os.path.join(experiment, f"fold_{fold}", "test_accuracy.txt")
        with open(result, encoding="utf-8") as f:
            accuracies[fold] = float(f.readline().split(":")[1])
    mean = sum(accuracies.values()) / len(accuracies)
    lines = [f"fold {k}: accuracy {v:.4f}" for k, v in accuracies.items()]
    lines.append(f"Mean test accuracy over {len(accuracies)} folds: {100 * mean:.2f}%")
    with open(os.path.join(experiment, "cv_accuracy.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return mean


if __name__ == "__main__":
    args = sys.argv[1:]
    if "--test_spk_id=all" in args or any(
        a == "--test_spk_id" and b == "all" for a, b in zip(args, args[1:])
    ):
        run_all_folds(args)
    else:
        run_fold(args)
