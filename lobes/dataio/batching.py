"""Training dataloader options shared by every recipe: SpeechBrain's
``DynamicBatchSampler`` (batches of a total duration) or fixed-size
batches, as the YAML says.

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

from speechbrain.dataio.sampler import DynamicBatchSampler


def train_loader_kwargs(hparams, train_data):
    """The training dataloader options: ``train_dataloader_opts`` and, with
    ``dynamic_batching``, a ``DynamicBatchSampler`` of
    ``dynamic_batch_sampler`` (``max_batch_length`` seconds of audio per
    batch and process, ``num_buckets``, ``shuffle``, ``batch_ordering``)
    that replaces ``batch_size`` and ``shuffle``."""
    kwargs = dict(hparams["train_dataloader_opts"])
    if not hparams["dynamic_batching"]:
        return kwargs
    dyn = hparams["dynamic_batch_sampler"]
    kwargs["batch_sampler"] = DynamicBatchSampler(
        train_data,
        max_batch_length=dyn["max_batch_length"],
        num_buckets=dyn["num_buckets"],
        length_func=lambda x: float(x["duration"]),
        shuffle=dyn["shuffle"],
        batch_ordering=dyn["batch_ordering"],
    )
    kwargs.pop("batch_size", None)
    kwargs.pop("shuffle", None)
    return kwargs
