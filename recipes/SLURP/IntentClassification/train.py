#!/usr/bin/env python3
"""MP3S SLURP probe on a frozen BEST-RQ encoder: scenario (and intent).

The encoder of a BEST-RQ pretraining run (any mixer) is frozen; a learned
softmax-weighted sum of all its hidden layers feeds a probe trained on the
real SLURP recordings (Zaiem et al., "Speech Self-Supervised Representation
Benchmarking: Are We Doing it Right?", the MP3S benchmark). Two probes, one
YAML each:

* ``hparams/linear.yaml``: mean over the valid frames, then linear heads;
* ``hparams/bilstm.yaml``: 2-layer BiLSTM, linear projection, mean, heads.

One linear head per task of ``tasks`` reads the pooled vector: the
**scenario** (18 classes, the MP3S score; ``tasks: [scenario]``, the MP3S
loss, is the default) and, with ``tasks: [scenario, intent]``, the
**intent** (``scenario_action``) too, the loss then being the sum of their
NLLs. The heads are sized by the label encoders (saved in the output
folder). Every devel and test recording is scored (``avoid_if_longer_than``
only limits training). Adam (lr 2e-4) on the probe, Adam (lr 0.01) on the
layer weights, NewBob annealing of both on the validation scenario error,
the best checkpoint (lowest scenario error) is tested.

To run this recipe::

    python train.py hparams/linear.yaml \\
        --data_folder=/path/to/slurp \\
        --pretrained_path=/path/to/bestrq_summarymixing/1000/save

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import sys

import speechbrain as sb
from speechbrain.utils.distributed import if_main_process, run_on_main
from speechbrain.utils.logger import get_logger

from lobes.recipe import parse_arguments
from lobes.dataio.audio import filter_by_duration, load_audio
from lobes.brains.probing import ProbeBrain
from lobes.dataio.manifest import dataset_from_csv
from lobes.recipe import load_hparams, lock_output_folder, record_encoder

TASKS = ("scenario", "intent")
logger = get_logger(__name__)
# Keys every YAML of this recipe defines (another recipe's YAML is refused).
REQUIRED_KEYS = ("pretrained_path", "weighted_ssl", "n_scenarios", "n_intents", "scenario_head")


def check_tasks(tasks):
    """Checks the ``tasks`` list of the YAML: the scenario (the MP3S score,
    on which checkpoints are chosen), optionally with the intent.

    Example
    -------
    >>> check_tasks(["scenario", "intent"])
    ['scenario', 'intent']
    >>> check_tasks(["intent"])
    Traceback (most recent call last):
    ...
    ValueError: tasks: ['intent'] in the YAML; ...
    """
    tasks = list(tasks)
    if "scenario" not in tasks or not set(tasks) <= set(TASKS) or len(set(tasks)) != len(tasks):
        raise ValueError(
            f"tasks: {tasks} in the YAML; use [scenario] (MP3S: the scenario "
            "loss only) or [scenario, intent] (the sum of both losses)."
        )
    return tasks


class IntentBrain(ProbeBrain):
    """Scenario (and intent) classification from pooled weighted-sum
    features; ``hparams.tasks`` names the heads."""

    def compute_forward(self, batch, stage):
        """Waveforms -> log-probabilities of each task, {task: (B, 1, C)}."""
        batch = batch.to(self.device)
        wavs, wav_lens = batch.sig
        feats = self.encode(wavs, wav_lens, batch.id)  # (B, T', D)
        if "rnn" in self.modules:
            # packed by length (pack_lstm: True), or padded as in MP3S
            lengths = wav_lens if self.hparams.pack_lstm else None
            feats, _ = self.modules.rnn(feats, lengths=lengths)
            feats = self.modules.rnn_proj(feats)
        pooled = self.hparams.mean_pool(feats, wav_lens)  # (B, 1, D)
        return {
            task: self.hparams.log_softmax(self.modules[f"{task}_head"](pooled))
            for task in self.hparams.tasks
        }

    def compute_objectives(self, predictions, batch, stage):
        """Sum of the NLLs of the tasks; error rates outside training."""
        loss = 0.0
        for task in self.hparams.tasks:
            targets, _ = getattr(batch, f"{task}_encoded")  # (B, 1)
            loss = loss + self.hparams.compute_cost(predictions[task], targets)
            if stage != sb.Stage.TRAIN:
                self.error_metrics[task].append(batch.id, predictions[task], targets)
        return loss

    def on_stage_start(self, stage, epoch=None):
        """Fresh error-rate trackers for validation and test."""
        if stage != sb.Stage.TRAIN:
            self.error_metrics = {
                task: self.hparams.error_stats() for task in self.hparams.tasks
            }

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Logs loss, accuracies and layer weights; anneals, checkpoints."""
        if stage == sb.Stage.TRAIN:
            self.train_stats = {"loss": stage_loss}
            return
        stats = {"loss": stage_loss}
        for task in self.hparams.tasks:
            error = self.error_metrics[task].summarize("average")
            stats[f"{task}_error"] = error
            stats[f"{task}_accuracy"] = 1.0 - error
        if stage == sb.Stage.VALID:
            lrs = self.anneal(stats["scenario_error"])
            self.hparams.train_logger.log_stats(
                stats_meta={"epoch": epoch, **lrs,
                            "layer_weights": self.layer_weights_summary()},
                train_stats=self.train_stats,
                valid_stats=stats,
            )
            self.checkpointer.save_and_keep_only(
                meta={"scenario_error": stats["scenario_error"]},
                min_keys=["scenario_error"],
            )
        else:
            self.hparams.train_logger.log_stats(
                stats_meta={"Epoch loaded": self.hparams.epoch_counter.current,
                            "layer_weights": self.layer_weights_summary()},
                test_stats=stats,
            )
            if if_main_process():
                with open(self.hparams.test_results_file, "w", encoding="utf-8") as fout:
                    for task in self.hparams.tasks:
                        fout.write(f"{task} accuracy: {stats[f'{task}_accuracy']:.4f}\n")
                    fout.write(f"layer weights: {self.layer_weights_summary()}\n")


def dataio_prepare(hparams):
    """Datasets of the prepared CSVs, audio and label pipelines.

    Returns
    -------
    datasets : dict
        ``train``, ``valid``, ``test``: ``DynamicItemDataset`` objects;
        devel and test hold every recording (sorted by duration), training
        the recordings up to ``avoid_if_longer_than`` s (``null``: all).
    encoders : dict
        One ``CategoricalEncoder`` per task of ``tasks`` (saved in
        ``save_folder``; built on all splits' labels, training first, so a
        label absent from training still has an index, and is simply never
        predicted).
    """
    datasets = {}
    for name in ("train", "valid", "test"):
        data = dataset_from_csv(  # checked first: columns, IDs, files
            hparams[f"{name}_csv"], ("ID", "duration", "wav", *hparams["tasks"])
        )
        # MP3S keeps every devel/test recording; training may drop the longest.
        limit = hparams["avoid_if_longer_than"] if name == "train" else None
        datasets[name] = filter_by_duration(
            data, name, max_duration=limit,
            sort_key="duration" if name != "train" else None,
        )
    if hparams["sorting"] in ("ascending", "descending"):
        datasets["train"] = datasets["train"].filtered_sorted(
            sort_key="duration", reverse=hparams["sorting"] == "descending"
        )
        hparams["train_dataloader_opts"]["shuffle"] = False
    elif hparams["sorting"] != "random":
        raise ValueError(
            f"sorting: {hparams['sorting']!r} in the YAML; use random, ascending or descending."
        )
    all_sets = list(datasets.values())

    @sb.utils.data_pipeline.takes("wav")
    @sb.utils.data_pipeline.provides("sig")
    def audio_pipeline(wav):
        return load_audio(wav, hparams["sample_rate"])

    sb.dataio.dataset.add_dynamic_item(all_sets, audio_pipeline)
    encoders = {}
    for task in hparams["tasks"]:
        encoder = sb.dataio.encoder.CategoricalEncoder()

        @sb.utils.data_pipeline.takes(task)
        @sb.utils.data_pipeline.provides(f"{task}_encoded")
        def label_pipeline(label, encoder=encoder):
            return encoder.encode_label_torch(label)

        sb.dataio.dataset.add_dynamic_item(all_sets, label_pipeline)
        encoder.load_or_create(
            path=f"{hparams['save_folder']}/{task}_encoder.txt",
            from_didatasets=all_sets,
            output_key=task,
        )
        encoders[task] = encoder
    sb.dataio.dataset.set_output_keys(
        all_sets, ["id", "sig", *(f"{task}_encoded" for task in hparams["tasks"])]
    )
    return datasets, encoders


def add_heads(hparams, encoders):
    """Builds the head of each task (``scenario_head``, ``intent_head``: YAML
    partials) with one output per label, and adds it to ``model`` and
    ``modules``."""
    for task in hparams["tasks"]:
        n_labels = len(encoders[task])
        expected = hparams.get(f"n_{task}s")
        if expected is not None and n_labels != expected:
            logger.warning(
                f"{n_labels} {task} labels in the data, {expected} expected "
                f"(n_{task}s in the YAML): is this the full SLURP?"
            )
        encoders[task].expect_len(n_labels)
        head = hparams[f"{task}_head"](n_neurons=n_labels)
        hparams["model"].append(head)
        hparams["modules"][f"{task}_head"] = head


if __name__ == "__main__":
    hparams_file, run_opts, overrides = parse_arguments(sys.argv[1:])
    sb.utils.distributed.ddp_init_group(run_opts)
    hparams, overrides = load_hparams(hparams_file, overrides, REQUIRED_KEYS)
    hparams["tasks"] = check_tasks(hparams["tasks"])
    lock_output_folder(hparams["output_folder"])  # one run per folder
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )
    record_encoder(hparams)

    from slurp_prepare import prepare_slurp  # noqa: E402

    run_on_main(
        prepare_slurp,
        kwargs={
            "data_folder": hparams["data_folder"],
            "save_folder": hparams["output_folder"],
            "skip_prep": hparams["skip_prep"],
            "check_audio": hparams["check_audio"],
            "skip_bad_audio": hparams["skip_bad_audio"],
        },
    )
    datasets, encoders = dataio_prepare(hparams)
    add_heads(hparams, encoders)
    hparams["weighted_ssl"].load_pretrained(hparams["pretrained_path"])

    brain = IntentBrain(
        modules=hparams["modules"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    brain.fit(
        brain.hparams.epoch_counter,
        datasets["train"],
        datasets["valid"],
        train_loader_kwargs=hparams["train_dataloader_opts"],
        valid_loader_kwargs=hparams["valid_dataloader_opts"],
    )
    brain.evaluate(
        datasets["test"],
        min_key="scenario_error",
        test_loader_kwargs=hparams["test_dataloader_opts"],
    )
