"""``Brain`` mixins shared by every recipe (pretraining and probes).

* ``EpochSeededBatchesMixin``: the batch order depends on seed and epoch
  only, so a resumed run sees the batches an uninterrupted one would;
* ``CPUDistributedMixin``: DDP on CPU (gloo) for modules with BatchNorm.

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import speechbrain as sb
import torch


class EpochSeededBatchesMixin:
    """Makes a ``batch_sampler`` (e.g. ``DynamicBatchSampler``) reshuffle by
    seed and epoch, also in single-process runs.

    SpeechBrain's ``Brain.make_dataloader`` only registers a batch sampler as
    ``train_sampler`` under DDP, so without DDP its ``set_epoch`` is never
    called: the batch order then depends on how many epochs this *process*
    has iterated, not on the epoch number, and a resumed run trains on
    batches in another order than an uninterrupted one would.

    Each loader also gets its own ``torch.Generator`` (unless one is given):
    a PyTorch ``DataLoader`` otherwise draws its workers' base seed from the
    *global* RNG whenever an iterator is created. After an intra-epoch
    recovery the iterator is created after the RNG state was restored, so the
    masks and noise of every following step would be shifted by that draw.
    """

    def make_dataloader(self, dataset, stage, ckpt_prefix="dataloader-", **loader_kwargs):
        """SpeechBrain's dataloader, with the train batch sampler registered
        and a private generator for the workers' seeds."""
        if loader_kwargs.get("generator") is None:
            seed = getattr(self.hparams, "seed", 0)
            loader_kwargs["generator"] = torch.Generator().manual_seed(seed)
        loader = super().make_dataloader(dataset, stage, ckpt_prefix, **loader_kwargs)
        sampler = loader_kwargs.get("batch_sampler")
        if stage == sb.Stage.TRAIN and self.train_sampler is None and hasattr(sampler, "set_epoch"):
            self.train_sampler = sampler
        return loader


class CPUDistributedMixin:
    """DDP on CPU (gloo) for a ``Brain`` whose modules hold BatchNorm.

    SpeechBrain 1.1.2 converts every BatchNorm of a trainable module to
    ``SyncBatchNorm`` before wrapping it in DDP, and ``SyncBatchNorm`` refuses
    CPU modules: an ECAPA or X-vector probe cannot start under ``torchrun``
    on CPU. On CPU this wraps the modules in DDP as SpeechBrain does, minus
    the conversion (each rank normalises with its own batch statistics, as
    BatchNorm does without DDP); on GPU SpeechBrain's own code runs.
    """

    def _wrap_distributed(self):
        if not self.distributed_launch or str(self.device).startswith("cuda"):
            return super()._wrap_distributed()
        for name, module in self.modules.items():
            if any(p.requires_grad for p in module.parameters()):
                self.modules[name] = torch.nn.parallel.DistributedDataParallel(
                    module, device_ids=None,
                    find_unused_parameters=self.find_unused_parameters,
                )
