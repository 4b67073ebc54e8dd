"""Every use of SpeechBrain's (and tqdm's) non-public API, in one place.

Each entry below has no public replacement in the SpeechBrain versions we
support (``lobes.utils.versions.SUPPORTED``); each says what would remove it.
The rest of the package calls these names, so a SpeechBrain release that
changes one of them breaks here, with a message naming it, and nowhere else.

=============================  ==================================  =====================================
private name                   why we need it                      what removes it
=============================  ==================================  =====================================
``Checkpointer.``              atomic checkpoints: the folder a    a ``Checkpointer`` option to save to
``_new_checkpoint_dirpath``,   checkpoint is written to is         a temporary folder and rename
``_custom_checkpoint_dirpath`` chosen by these two hooks           (to propose upstream)
``Checkpointer.``              log the step and date of the        a public recovery hook
``_call_load_hooks``           checkpoint being recovered
``Brain._wrap_distributed``    DDP on CPU without SyncBatchNorm;   SpeechBrain skipping SyncBatchNorm on
                               ``find_unused_parameters`` with     CPU; a ``find_unused_parameters``
                               LayerDrop                           run option (1.1 has it in run_opts
                                                                   only)
``tqdm._instances``            the live progress bar of            a ``Brain`` hook for the bar's text
                               SpeechBrain's training loop
``Conv2d`` / ``Convolution``   the padding-safe front-end and      public kernels of those modules
``Module`` internals           convolution module reuse their
                               weights (``conv.conv``,
                               ``padding``, ``bottleneck``...)
``ConformerEncoderLayer``      ``replace_attention`` builds a      constructor arguments kept on the
internals (``mha_layer``,      mixer with the layer's width,       layer (``d_model``, ``activation``,
``ffn_module1``, ``drop``)     activation and dropout              ``dropout``)
=============================  ==================================  =====================================

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import torch
from speechbrain.nnet.CNN import Conv2d
from speechbrain.utils.checkpoints import Checkpointer


class CheckpointerHooks(Checkpointer):
    """A ``Checkpointer`` whose private hooks call public-named methods:
    ``checkpoint_dirpath(name)`` chooses the folder of a new checkpoint
    (``None``: SpeechBrain's choice) and ``recover_hooks(checkpoint)`` runs
    the loading of a recovered one."""

    def checkpoint_dirpath(self, name=None):
        """SpeechBrain's folder for a new checkpoint (``name``: custom)."""
        if name is None:
            return super()._new_checkpoint_dirpath()
        return super()._custom_checkpoint_dirpath(name)

    def _new_checkpoint_dirpath(self):
        return self.checkpoint_dirpath()

    def _custom_checkpoint_dirpath(self, name):
        return self.checkpoint_dirpath(name)

    def recover_hooks(self, checkpoint):
        """Loads every recoverable of ``checkpoint`` (SpeechBrain's hooks)."""
        return super()._call_load_hooks(checkpoint)

    def _call_load_hooks(self, checkpoint):
        return self.recover_hooks(checkpoint)


class DistributedWrapHook:
    """``Brain`` mixin: ``wrap_distributed()`` is called where SpeechBrain
    wraps the modules in DDP; its default is SpeechBrain's own wrapping
    (``wrap_distributed_default``)."""

    def wrap_distributed(self):
        """Wraps the modules for DDP; override, then call the default."""
        return self.wrap_distributed_default()

    def wrap_distributed_default(self):
        """SpeechBrain's DDP wrapping."""
        return super()._wrap_distributed()

    def _wrap_distributed(self):
        return self.wrap_distributed()


def live_progress_bars():
    """The tqdm bars open now (SpeechBrain's training loop shows one)."""
    from tqdm import tqdm

    return [bar for bar in list(getattr(tqdm, "_instances", ())) if not bar.disable]


def check_conv_frontend(cnn):
    """Checks that SpeechBrain's ``ConvolutionFrontEnd`` ``cnn`` has the
    structure the padding-safe front-end re-runs (no residual blocks; each
    ``Conv2d`` with "same" reflect padding, no transposes, no max-norm)."""
    for module in cnn.modules():
        ok = getattr(module, "reduce_conv", None) is None
        if isinstance(module, Conv2d):
            ok = ok and module.padding == "same" and module.padding_mode == "reflect"
            ok = ok and not (module.swap or module.skip_transpose or module.max_norm)
        if not ok:
            raise RuntimeError(
                f"This SpeechBrain's ConvolutionFrontEnd ({module!r}) is not "
                "the one lobes.nnet.frontend re-runs: use a supported "
                "SpeechBrain (lobes.utils.versions.SUPPORTED)."
            )


CONVOLUTION_MODULE_PARTS = ("layer_norm", "bottleneck", "conv", "after_conv", "causal")


def check_convolution_module(module):
    """Checks that SpeechBrain's Conformer ``ConvolutionModule`` has the
    parts ``MaskedConvolutionModule.forward`` calls, ``after_conv`` being
    (LayerNorm, activation, Linear, Dropout) (its Linear runs through
    ``linear_out8``)."""
    missing = [p for p in CONVOLUTION_MODULE_PARTS if not hasattr(module, p)]
    after = getattr(module, "after_conv", None)
    if after is not None and not (
        len(after) == 4
        and isinstance(after[0], torch.nn.LayerNorm)
        and isinstance(after[2], torch.nn.Linear)
        and isinstance(after[3], torch.nn.Dropout)
    ):
        missing.append("after_conv = (LayerNorm, activation, Linear, Dropout)")
    if missing:
        raise RuntimeError(
            f"This SpeechBrain's ConvolutionModule has no {', '.join(missing)}: "
            "use a supported SpeechBrain (lobes.utils.versions.SUPPORTED)."
        )


def conformer_layer_settings(layer):
    """``(d_model, activation class, dropout)`` of SpeechBrain's
    ``ConformerEncoderLayer`` ``layer``, read from its modules (the layer
    keeps no constructor arguments): the width of its first feed-forward
    LayerNorm, the activation inside that feed-forward module, its dropout.

    Example
    -------
    >>> from speechbrain.lobes.models.transformer.Conformer import ConformerEncoderLayer
    >>> import torch
    >>> layer = ConformerEncoderLayer(16, 32, 2, activation=torch.nn.GELU, dropout=0.2)
    >>> d_model, activation, dropout = conformer_layer_settings(layer)
    >>> d_model, activation.__name__, dropout
    (16, 'GELU', 0.2)
    """
    try:
        norm, ffn = layer.ffn_module1[0], layer.ffn_module1[1].ffn
        activation = type(ffn[1])
        settings = (int(norm.normalized_shape[0]), activation, float(layer.drop.p))
        ok = hasattr(layer, "mha_layer") and isinstance(ffn[1], torch.nn.Module)
    except (AttributeError, IndexError, TypeError):
        ok = False
    if not ok:
        raise RuntimeError(
            f"This SpeechBrain's ConformerEncoderLayer ({type(layer).__name__}) "
            "has not the structure lobes.nnet.speechbrain_adapter reads "
            "(mha_layer, ffn_module1 = [LayerNorm, PositionalwiseFeedForward], "
            "drop): use a supported SpeechBrain (lobes.utils.versions.SUPPORTED)."
        )
    return settings
