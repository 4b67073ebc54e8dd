"""Loading a probing recipe's YAML with the encoder of a chosen mixer.

An MP3S recipe has one YAML per probe. Its encoder comes from the top-level
``hparams/encoder_<mixer>.yaml`` (the file the pretraining included), through
one line of the form::

    encoder_hparams: !include:../../../../hparams/encoder_summarymixing.yaml

``--mixer=<name>`` on the command line selects another of those files, so
that ``python train.py hparams/<probe>.yaml --mixer=fastformer
--pretrained_path=...`` probes a Fastformer encoder with exactly the
architecture it was pretrained with. Sizes of a non-default encoder (e.g. the
24-layer models) are overridden as in pretraining,
``--encoder_hparams="{num_layers: 24, d_model: 1048}"``; a checkpoint of
another mixer or size is then refused when it is loaded
(``lobes.pretrained``).

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import io
import re
from pathlib import Path

from hyperpyyaml import load_hyperpyyaml

from lobes.mixers import check_mixer_name

INCLUDE_LINE = re.compile(
    r"^(encoder_hparams:\s*!include:\S*encoder_)(\w+)(\.yaml)", re.MULTILINE
)
MIXER_OVERRIDE = re.compile(r"^mixer:\s*([\w-]+)\s*$", re.MULTILINE)


def select_mixer(yaml_text, mixer, where="the YAML"):
    """Rewrites the encoder ``!include`` line of ``yaml_text`` to ``mixer``.

    Example
    -------
    >>> text = "encoder_hparams: !include:../hparams/encoder_mhsa.yaml\\n"
    >>> select_mixer(text, "fastformer")
    'encoder_hparams: !include:../hparams/encoder_fastformer.yaml\\n'
    >>> select_mixer(text, "transformer")
    Traceback (most recent call last):
    ...
    ValueError: Unknown token mixer 'transformer'...
    """
    check_mixer_name(mixer)
    if not INCLUDE_LINE.search(yaml_text):
        raise ValueError(
            f"{where} has no line 'encoder_hparams: !include:.../"
            "encoder_<mixer>.yaml', so --mixer cannot select the encoder."
        )
    return INCLUDE_LINE.sub(rf"\g<1>{mixer}\g<3>", yaml_text)


def load_recipe_hparams(hparams_file, overrides=""):
    """``load_hyperpyyaml`` of ``hparams_file`` with ``overrides`` (the string
    of ``speechbrain.parse_arguments``), honouring ``mixer: <name>``.

    Returns
    -------
    hparams : dict
        The loaded hyperparameters.
    yaml_text : str
        The YAML actually used (to save in the experiment folder).
    """
    yaml_text = Path(hparams_file).read_text(encoding="utf-8")
    found = MIXER_OVERRIDE.search(overrides or "")
    if found:
        yaml_text = select_mixer(yaml_text, found.group(1), hparams_file)
        include = re.search(r"!include:(\S+)", INCLUDE_LINE.search(yaml_text)[0])
        path = Path(hparams_file).parent / include.group(1)
        if not path.is_file():
            have = sorted(p.stem[8:] for p in path.parent.glob("encoder_*.yaml"))
            raise ValueError(
                f"--mixer={found.group(1)}: there is no encoder YAML {path}; "
                f"encoder YAMLs exist for: {', '.join(have)}"
            )
    stream = io.StringIO(yaml_text)
    stream.name = str(hparams_file)  # relative !include paths
    return load_hyperpyyaml(stream, overrides), yaml_text
