"""Linear-complexity BEST-RQ for SpeechBrain, grouped by stage:

* :mod:`lobes.nnet`: the networks: token mixers (``nnet.mixers``, one file
  each, and their registry ``MIXERS``), the convolutional front-end, the
  Conformer encoder, BEST-RQ's quantiser, masks and loss, and the weighted
  layer sum of the probes;
* :mod:`lobes.config`: the encoder definitions of ``hparams/`` and
  argument checks;
* :mod:`lobes.brains`: SpeechBrain ``Brain`` classes (pretraining, probing,
  fine-tuning, CTC decoding) and the mixins they share;
* :mod:`lobes.dataio`: audio reading and checks, data preparation, dataset
  pipelines, batching and tokenisers;
* :mod:`lobes.recipe`: what every recipe's ``train.py`` calls first
  (arguments, hyperparameters, restart checks);
* :mod:`lobes.deploy`: loading pretrained weights, export to a model folder,
  conversion of other checkpoints, inference and feature extraction;
* :mod:`lobes.utils`: checkpointing and run curves.

``lobes.encoder`` and ``lobes.inference`` only keep the names that model
folders exported by earlier versions refer to.
"""

# The SpeechBrain found must be one this package runs with (a clear message
# naming its version, the supported range and what to do, before any module
# imports SpeechBrain): lobes.utils.versions.
from lobes.utils.versions import check_speechbrain as _check_speechbrain

_check_speechbrain()
