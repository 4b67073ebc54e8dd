"""Checks a model folder's ``hyperparams.yaml`` before HyperPyYAML builds it.

HyperPyYAML runs code: ``!apply:os.system [...]`` calls any function,
``!new:`` / ``!name:`` / ``!module:`` reach any class or module,
``!applyref:`` calls a function while references are resolved,
``!include:`` reads another file, ``!!python/...`` tags build any object,
and a plain value written ``(..)`` is parsed as a tuple by PyYAML's unsafe
loader. A model folder comes from someone else, so
``lobes.deploy.inference.BestRQEncoder.from_hparams`` (and
``python -m lobes.deploy.extract``) first check its YAML here: only the
classes and functions that ``lobes.deploy.export`` writes (the encoder, the
Fbank features, the normaliser, SpeechBrain's ``Pretrainer`` and this
package's strict loading hook; the names of folders exported by earlier
versions too) may be built, ``!ref`` / ``!copy`` / ``!tuple`` are kept, and
anything else is refused with the key and the tag, before anything of the
file is built or run.

A recipe's own YAML (``train.py hparams/x.yaml``) is not checked: it is
yours, and is trusted as any script you run.

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import io
import re

import ruamel.yaml
import yaml

# Built by the model folders of earlier versions (before lobes/ was grouped
# by stage; tests/data/model_40517be), beside what export writes now.
EARLIER_TARGETS = {
    ("!apply:", "lobes.encoder.ConformerEncoder.from_config"),
    ("!new:", "lobes.encoder.ConformerEncoder"),
    ("!name:", "lobes.inference.load_encoder_checkpoint"),
    # the normaliser of every folder exported before lobes.nnet.normalization
    ("!new:", "speechbrain.processing.features.InputNormalization"),
}
# Tags that build no object of their own.
PLAIN_TAGS = {"!ref", "!copy", "!tuple", "!PLACEHOLDER"}
STANDARD_PREFIX = "tag:yaml.org,2002:"
STANDARD_TAGS = {"str", "int", "float", "bool", "null", "map", "seq", "timestamp", "binary", "merge", "set", "omap"}
CALL_KINDS = ("!new:", "!apply:", "!name:")
TUPLE_PATTERN = re.compile(r"^\(.*\)$", re.DOTALL)


class UntrustedYAMLError(ValueError):
    """A model folder's YAML would run code this package does not allow."""


def allowed_targets():
    """The (tag kind, dotted name) pairs a model folder may use: those of
    ``lobes.deploy.export``'s ``hyperparams.yaml`` and of earlier exports."""
    from lobes.deploy.export import HPARAMS_BODY

    allowed = set(EARLIER_TARGETS)
    for _, node in _walk(ruamel.yaml.YAML().compose(HPARAMS_BODY)):
        tag = _tag(node)
        for kind in CALL_KINDS:
            if tag.startswith(kind):
                allowed.add((kind, tag[len(kind):]))
    return allowed


def _tag(node):
    tag = getattr(node, "tag", None)
    return str(getattr(tag, "value", tag) or "")


def _walk(node, path="(top)"):
    """(key path, node) of every node, keys included."""
    if node is None:
        return
    yield path, node
    if isinstance(node, ruamel.yaml.MappingNode):
        for key, value in node.value:
            name = key.value if isinstance(key, ruamel.yaml.ScalarNode) else "?"
            sub = name if path == "(top)" else f"{path}.{name}"
            yield from _walk(key, sub)
            yield from _walk(value, sub)
    elif isinstance(node, ruamel.yaml.SequenceNode):
        for i, value in enumerate(node.value):
            yield from _walk(value, f"{path}[{i}]")


def _problems(text, allowed):
    """What in ``text`` (a HyperPyYAML document) would build or run
    something outside ``allowed``: a list of ``"<key>: <why>"``."""
    try:
        root = ruamel.yaml.YAML().compose(text)
    except ruamel.yaml.YAMLError as err:
        return [f"(not YAML) {str(err).splitlines()[0]}"]
    found = []
    for path, node in _walk(root):
        tag = _tag(node)
        if tag.startswith(STANDARD_PREFIX):
            if tag[len(STANDARD_PREFIX):] not in STANDARD_TAGS:
                found.append(f"{path}: tag !!{tag[len(STANDARD_PREFIX):]} builds a Python object")
        elif tag in PLAIN_TAGS:
            pass
        elif tag.startswith(CALL_KINDS):
            kind = next(k for k in CALL_KINDS if tag.startswith(k))
            if (kind, tag[len(kind):]) not in allowed:
                found.append(f"{path}: {tag} is not one of the classes and functions of a model folder")
        elif tag:
            found.append(f"{path}: tag {tag} is not allowed in a model folder (it reads files or runs code)")
        if isinstance(node, ruamel.yaml.ScalarNode) and (
            tag == "!tuple" or TUPLE_PATTERN.match(str(node.value))
        ):
            # HyperPyYAML parses "(...)" with PyYAML's unsafe loader.
            try:
                yaml.safe_load("[" + str(node.value).strip()[1:-1] + "]")
            except yaml.YAMLError:
                found.append(f"{path}: the tuple {str(node.value)[:60]!r} holds tags or is not plain YAML")
    return found


def check_model_yaml(text, where, overrides=None):
    """Refuses a model folder's YAML that would build or run anything but
    what ``lobes.deploy.export`` writes (see the module doc).

    Arguments
    ---------
    text : str
        The YAML.
    where : str
        Its path, for the message.
    overrides : dict or str, optional
        The caller's overrides (trusted), as given to ``from_hparams``.

    Raises
    ------
    UntrustedYAMLError
        Naming each key and tag refused; nothing in the file was run.

    Example
    -------
    >>> check_model_yaml("sample_rate: 16000\\nx: !ref <sample_rate>\\n", "ok.yaml")
    >>> try:
    ...     check_model_yaml("x: !apply:os.system [echo ran]\\n", "bad.yaml")
    ... except UntrustedYAMLError as err:
    ...     print(err)
    bad.yaml was not loaded: ... x: !apply:os.system is not one of ...
    """
    allowed = allowed_targets()
    found = _problems(text, allowed)
    if not found:
        # References and copies resolved (nothing else runs now), as
        # HyperPyYAML will resolve them: what it then builds is checked.
        from hyperpyyaml import resolve_references

        try:
            resolved = resolve_references(io.StringIO(text), overrides).getvalue()
        except Exception as err:  # a bad reference: HyperPyYAML would fail too
            raise UntrustedYAMLError(f"{where} was not loaded: {err}") from None
        found = _problems(resolved, allowed)
    if found:
        names = sorted({f"{kind}{name}" for kind, name in allowed})
        raise UntrustedYAMLError(
            f"{where} was not loaded: a model folder's hyperparams.yaml may "
            f"only build {', '.join(names)} (what lobes.deploy.export writes), "
            "and this one has: " + "; ".join(found[:10])
            + (f" (and {len(found) - 10} more)" if len(found) > 10 else "")
            + ". Nothing in it was run. If this YAML is your own, load it "
            "with BestRQEncoder.from_hparams(..., trust_yaml=True); otherwise "
            "re-export the model (python -m lobes.deploy.export --checkpoint "
            "<its folder> --out <new folder>: it reads only the weights)."
        )
