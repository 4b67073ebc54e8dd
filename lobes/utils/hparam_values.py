"""Type and range of every numeric hyperparameter, checked before any work.

A recipe's YAML and its command line give learning rates, epochs, batch
sizes, batch lengths, probabilities... SpeechBrain passes them on as they
are: ``--lr=fast`` fails inside AdamW after the data preparation,
``max_batch_length: -30`` is accepted and silently changes the batches, a
negative ``batch_size`` fails in a PyTorch traceback. ``check_values`` checks
them all at start, by key name (``NUMERIC_RULES``: the same names mean the
same thing in every recipe), at any depth of the YAML (``train_dataloader_opts:
{batch_size: ...}``, ``optimizer: !name:torch.optim.AdamW {weight_decay: ...}``),
and refuses every wrong one at once, naming the key, where it was set and
what is expected. Values given by reference (``!ref <lr>``) are checked where
they are defined. ``check_run_options`` does the same for SpeechBrain's
numeric run options (``--grad_accumulation_factor``, ``--max_grad_norm``...).

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import math
import re

import yaml

# kind: (test, what is expected)
KINDS = {
    "positive": (lambda v: _real(v) and v > 0, "a number > 0"),
    "nonnegative": (lambda v: _real(v) and v >= 0, "a number >= 0"),
    "probability": (lambda v: _real(v) and 0 <= v <= 1, "a probability, between 0 and 1"),
    "dropout": (lambda v: _real(v) and 0 <= v < 1, "a probability, from 0 to less than 1"),
    "fraction": (lambda v: _real(v) and 0 < v <= 1, "a number > 0 and <= 1"),
    "count": (lambda v: _whole(v) and v >= 1, "a whole number >= 1"),
    "natural": (lambda v: _whole(v) and v >= 0, "a whole number >= 0"),
    "integer": (lambda v: _whole(v), "a whole number"),
}

# (pattern on the key's own name, kind). The first that matches decides.
NUMERIC_RULES = [
    (r"^lr_annealing", None),  # a scheduler, not a rate
    (r"^(lr|learning_rate|lr_initial|initial_value|final_value)$|^lr_|_lr$", "positive"),
    (r"(^|_)epochs$", "count"),  # number_of_epochs
    (r"_epoch$", "natural"),  # update_until_epoch
    (r"batch_size$", "count"),
    (r"^max_batch_len(gth)?$", "positive"),
    (r"^(num_buckets|grad_accumulation_factor|optimizer_step_limit|log_interval"
     r"|checkpoints_to_keep|mask_length|cb_vocab|cb_dim|stack_frames|n_mels|n_fft"
     r"|sample_rate|beam_size|debug_batches|debug_epochs)$", "count"),
    (r"^(num_workers|nonfinite_patience|patient|ckpt_interval_steps)$", "natural"),
    (r"(^|_)warmup_steps$|^freeze_encoder_steps$", "natural"),
    (r"(^|_)prob$|^(dcf_)?p_target$", "probability"),
    (r"dropout$", "dropout"),
    (r"^annealing_factor$", "fraction"),
    (r"^(weight_decay|ckpt_interval_minutes|noise_std|improvement_threshold"
     r"|avoid_if_shorter_than|min_segment_duration)$", "nonnegative"),
    (r"^(max_grad_norm|avoid_if_longer_than|sentence_len|max_segment_duration"
     r"|hop_length|eps)$", "positive"),
    (r"^seed$", "integer"),
]
# Keys for which null means "no limit".
NONE_ALLOWED = {"avoid_if_longer_than", "avoid_if_shorter_than", "optimizer_step_limit"}
# A number as YAML 1.2 (HyperPyYAML's parser) reads it; PyYAML reads "1e-4" as text.
_YAML12_NUMBER = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$")


def _real(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _whole(v):
    return isinstance(v, int) and not isinstance(v, bool)


def rule_for(key):
    """The kind of value ``key`` takes (``KINDS``), or None.

    Example
    -------
    >>> rule_for("lr"), rule_for("lr_annealing"), rule_for("max_batch_length"), rule_for("mixer")
    ('positive', None, 'positive', None)
    """
    for pattern, kind in NUMERIC_RULES:
        if re.search(pattern, str(key)):
            return kind
    return None


def as_number(value):
    """``value``, or the number a YAML 1.2 parser reads in it (``"1e-4"``)."""
    if isinstance(value, str) and _YAML12_NUMBER.match(value.strip()):
        number = float(value)
        return int(number) if re.match(r"^[-+]?[0-9]+$", value.strip()) else number
    return value


class _Ref(str):
    """A value given by reference (``!ref``, ``!copy``): checked at its source."""


class _ValueLoader(yaml.SafeLoader):
    """Plain YAML of a HyperPyYAML file; references become ``_Ref``."""


def _construct(loader, tag_suffix, node):
    tag = node.tag
    if tag in ("!ref", "!copy", "!PLACEHOLDER") or tag.startswith("!include"):
        return _Ref(loader.construct_scalar(node) if isinstance(node, yaml.ScalarNode) else "")
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return _Ref(loader.construct_scalar(node))  # an object's scalar argument


_ValueLoader.add_multi_constructor("!", _construct)


def _problems(tree, path, source, found):
    if not isinstance(tree, dict):
        return
    for key, value in tree.items():
        name = f"{path}.{key}" if path else str(key)
        if isinstance(value, dict):
            _problems(value, name, source(name) if callable(source) else source, found)
            continue
        if isinstance(value, _Ref):
            continue
        kind = rule_for(key)
        if kind is None:
            continue
        if value is None and key in NONE_ALLOWED:
            continue
        test, expected = KINDS[kind]
        if not test(as_number(value)):
            where = source(name) if callable(source) else source
            found.append(f"{name} = {value!r} ({where}): expected {expected}")


def _merge(doc, overrides):
    """``overrides`` applied to ``doc`` as HyperPyYAML does (dicts merged)."""
    out = dict(doc)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _paths(tree, path=""):
    for key, value in tree.items():
        name = f"{path}.{key}" if path else str(key)
        yield name
        if isinstance(value, dict):
            yield from _paths(value, name)


def check_values(yaml_text, overrides=None, where="the YAML"):
    """Refuses every numeric hyperparameter of the wrong type or range.

    Arguments
    ---------
    yaml_text : str
        The recipe YAML.
    overrides : dict, optional
        The command-line overrides (``--key=value``). Numbers written as
        YAML 1.2 reads them (``--lr=1e-4``, which PyYAML reads as text) are
        made numbers in it, as the YAML's own would be.
    where : str
        The YAML's name, for the message.

    Raises
    ------
    ValueError
        Naming each key refused, where it was set and what it takes.

    Example
    -------
    >>> text = "lr: 0.001\\nopts:\\n    batch_size: 8\\nsched: !new:x.Y\\n    lr: !ref <lr>\\n"
    >>> check_values(text, {"opts": {"batch_size": 4}})
    >>> check_values(text, {"lr": "fast", "opts": {"batch_size": -4}})
    Traceback (most recent call last):
    ...
    ValueError: Hyperparameters refused (nothing was run):
      lr = 'fast' (command line --lr): expected a number > 0
      opts.batch_size = -4 (command line --opts): expected a whole number >= 1
    >>> overrides = {"lr": "1e-4"}
    >>> check_values(text, overrides); overrides
    {'lr': 0.0001}
    """
    overrides = overrides if overrides is not None else {}
    doc = yaml.load(yaml_text, Loader=_ValueLoader) or {}
    _coerce_numbers(overrides)
    merged = _merge(doc, overrides)
    given = set(_paths(overrides))

    def source(name):
        if name in given:
            return f"command line --{name.split('.')[0]}"
        return f"in {where}"

    found = []
    _problems(merged, "", source, found)
    if found:
        raise ValueError(
            "Hyperparameters refused (nothing was run):\n  " + "\n  ".join(found)
        )


def _coerce_numbers(tree):
    for key, value in list(tree.items()):
        if isinstance(value, dict):
            _coerce_numbers(value)
        elif rule_for(key) is not None:
            tree[key] = as_number(value)


RUN_OPTIONS = (
    "grad_accumulation_factor", "max_grad_norm", "nonfinite_patience",
    "ckpt_interval_minutes", "ckpt_interval_steps", "optimizer_step_limit",
    "debug_batches", "debug_epochs",
)


def check_run_options(run_opts):
    """Refuses SpeechBrain run options (``--grad_accumulation_factor=0``...)
    out of range, naming them (SpeechBrain checks their type only).

    Example
    -------
    >>> check_run_options({"grad_accumulation_factor": 2, "max_grad_norm": 5.0})
    >>> check_run_options({"grad_accumulation_factor": 0, "max_grad_norm": -1.0})
    Traceback (most recent call last):
    ...
    ValueError: Run options refused (nothing was run):
      --grad_accumulation_factor=0: expected a whole number >= 1
      --max_grad_norm=-1.0: expected a number > 0
    """
    found = []
    for key in RUN_OPTIONS:
        value = run_opts.get(key) if hasattr(run_opts, "get") else None
        if value is None:
            continue
        test, expected = KINDS[rule_for(key)]
        if not test(as_number(value)):
            found.append(f"--{key}={value}: expected {expected}")
    if found:
        raise ValueError("Run options refused (nothing was run):\n  " + "\n  ".join(found))
