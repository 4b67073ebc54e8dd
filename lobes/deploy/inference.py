"""Inference with a pretrained BEST-RQ encoder, SpeechBrain style.

``BestRQEncoder`` is a ``speechbrain.inference.interfaces.Pretrained``
loaded from a model folder written by ``lobes.deploy.export`` (``encoder.ckpt``,
``normalizer.ckpt``, ``hyperparams.yaml``)::

    from lobes.deploy.inference import BestRQEncoder

    encoder = BestRQEncoder.from_hparams(source="pretrained/bestrq_summarymixing")
    out = encoder.encode_file("speech.flac")
    out.hidden_states        # L+1 tensors (1, T', D): input of layer 1, then each layer
    out = encoder.encode_batch(wavs, wav_lens, layer_weights=w)
    out.weighted_sum         # (B, T', D) = sum_l w_l * hidden_states[l]

It runs the pretraining's feature pipeline (80 fbank, then the pretraining's
normalisation: its global statistics, never updated, or per utterance) and
the encoder, in eval mode
and without gradients, on CPU or GPU (``run_opts={"device": "cuda"}``), for
every token mixer. Inputs are never chunked: with a linear mixer, minutes of
audio cost time and memory linear in their length (MHSA's cost is quadratic).

``from_hparams`` works offline from a local folder. With ``savedir=None``
(the default here) the files are read where they are; with a ``savedir``
SpeechBrain symlinks them there, and *keeps* links already present, so give
each model its own ``savedir``.

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

from pathlib import Path
from typing import List, NamedTuple, Optional

import torch
from speechbrain.inference.interfaces import Pretrained

from lobes.dataio.audio import load_audio
from lobes.deploy.loading import log_loaded_checkpoint
from lobes.utils.safe_io import load_tensors


class EncodedBatch(NamedTuple):
    """Output of ``BestRQEncoder.encode_batch``.

    Attributes
    ----------
    hidden_states : list of torch.Tensor
        L+1 tensors (B, T', D) (T' = ceil(fbank frames / 4), 40 ms frames):
        the input of the first Conformer layer, then each layer's output (the
        last one after the final LayerNorm). Zeros beyond each length.
    lengths : torch.Tensor
        (B,) relative lengths in [0, 1] (SpeechBrain convention).
    frames : torch.Tensor
        (B,) number of valid frames of each utterance (long).
    weighted_sum : torch.Tensor or None
        (B, T', D) sum of the hidden states weighted by ``layer_weights``,
        when given.
    """

    hidden_states: List[torch.Tensor]
    lengths: torch.Tensor
    frames: torch.Tensor
    weighted_sum: Optional[torch.Tensor]


def load_encoder_checkpoint(encoder, path):
    """Pretrainer hook: loads ``encoder.ckpt`` strictly into ``encoder``.

    SpeechBrain's default transfer hook loads with ``strict=False`` and only
    warns about missing or unexpected parameters; here any mismatch (other
    mixer or size: the state dict records them) is an error that says what
    differs.

    Example
    -------
    >>> import tempfile
    >>> from lobes.nnet.encoder import ConformerEncoder
    >>> path = tempfile.mkdtemp() + "/encoder.ckpt"
    >>> small = dict(num_layers=1, nhead=1, d_ffn=32, kernel_size=3)
    >>> torch.save(ConformerEncoder("fastformer", d_model=16, **small).state_dict(), path)
    >>> load_encoder_checkpoint(ConformerEncoder("fastformer", d_model=24, **small), path)
    Traceback (most recent call last):
    ...
    ValueError: ...d_model: checkpoint 16 vs this model 24...
    """
    log_loaded_checkpoint(Path(path).resolve())  # path and pretraining step
    state = load_tensors(path, what="encoder checkpoint")
    try:
        encoder.load_state_dict(state)
    except (ValueError, RuntimeError) as err:
        raise ValueError(
            f"{path} does not fit the encoder defined by the model folder's "
            f"hyperparams.yaml ({getattr(encoder, 'config', '?')}): {err} "
            "Re-export the model with lobes.deploy.export, or fix hyperparams.yaml."
        ) from None


def _run_folder_message(folder, hparams_file="hyperparams.yaml"):
    """If ``folder`` is a training run's output folder rather than a model
    folder: where its model folder is, or how to write one. Else None."""
    from lobes.recipe import _plain_yaml

    yaml_file = folder / hparams_file
    doc = {}
    if yaml_file.is_file():
        try:
            doc = _plain_yaml(yaml_file.read_text(encoding="utf-8"))
        except Exception:  # not YAML: the loading says so
            return None
        if not isinstance(doc, dict) or "pretrainer" in doc:
            return None  # a model folder
    elif not (folder / "save").is_dir() and not any(folder.glob("CKPT+*")):
        return None
    exported = doc.get("export_folder")
    candidates = [Path(exported)] if isinstance(exported, str) and exported else []
    candidates.append(folder / "encoder")
    for candidate in candidates:
        if (candidate / hparams_file).is_file():
            return (
                f"{folder} is a training run's folder, not a model folder: its "
                f"model folder is {candidate} (give that)."
            )
    save = folder / "save" if (folder / "save").is_dir() else folder
    return (
        f"{folder} is a training run's folder, not a model folder, and its "
        f"encoder was not exported yet (pretraining exports it to "
        f"{candidates[0]} when it ends). Export it: python -m "
        f"lobes.deploy.export --checkpoint {save} --out {candidates[0]}"
    )


class BestRQEncoder(Pretrained):
    """A pretrained BEST-RQ encoder: waveforms to every layer's hidden states.

    Build it with ``BestRQEncoder.from_hparams(source=<model folder>)``
    (see ``lobes.deploy.export``). The folder's ``hyperparams.yaml`` provides
    ``modules`` ``compute_features`` (Fbank), ``normalizer``
    (``lobes.nnet.normalization.FeatureNormalizer``: the pretraining's
    normalisation and statistics; SpeechBrain's ``InputNormalization`` in
    folders exported before it) and ``encoder``
    (``lobes.nnet.encoder.ConformerEncoder``), and ``sample_rate``.

    Example
    -------
    >>> from speechbrain.lobes.features import Fbank
    >>> from lobes.nnet.normalization import FeatureNormalizer
    >>> from lobes.nnet.encoder import ConformerEncoder
    >>> norm = FeatureNormalizer("authors")
    >>> _ = norm(torch.rand(1, 10, 80))
    >>> enc = BestRQEncoder(
    ...     modules={"compute_features": Fbank(n_mels=80), "normalizer": norm,
    ...              "encoder": ConformerEncoder("summarymixing", num_layers=2,
    ...                  d_model=16, nhead=1, d_ffn=32, kernel_size=3)},
    ...     hparams={"sample_rate": 16000}, run_opts={"device": "cpu"})
    >>> out = enc.encode_batch(torch.rand(2, 16000), torch.tensor([1.0, 0.5]),
    ...                        layer_weights=[0.2, 0.3, 0.5])
    >>> len(out.hidden_states), out.hidden_states[0].shape, out.frames.tolist()
    (3, torch.Size([2, 26, 16]), [26, 13])
    >>> out.weighted_sum.shape
    torch.Size([2, 26, 16])
    """

    MODULES_NEEDED = ["compute_features", "normalizer", "encoder"]
    HPARAMS_NEEDED = ["sample_rate"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        missing = [m for m in self.MODULES_NEEDED if m not in self.mods]
        if missing:
            raise ValueError(
                f"BestRQEncoder needs modules {self.MODULES_NEEDED}; missing "
                f"{missing}. Use a model folder written by lobes.deploy.export."
            )

    @classmethod
    def from_hparams(
        cls, source, hparams_file="hyperparams.yaml", savedir=None, trust_yaml=False, **kwargs
    ):
        """Loads a model folder (``lobes.deploy.export``); see ``Pretrained.from_hparams``.

        A local ``source`` that is not a folder, or has no ``hparams_file``,
        fails with a clear error (SpeechBrain would take it for a Hugging
        Face model name and try to download it); a pretraining run folder
        is told where its model folder is.

        The folder's ``hyperparams.yaml`` may come from anyone: before
        HyperPyYAML builds it, it is checked to build only what
        ``lobes.deploy.export`` writes (``lobes.deploy.model_yaml``), and
        the weights are read with ``weights_only=True``, so that loading a
        stranger's model folder runs none of its code. ``trust_yaml=True``
        skips the YAML check, for a YAML of your own that builds more.
        """
        local = Path(str(source)).expanduser()
        looks_local = isinstance(source, Path) or str(source).startswith(
            ("/", ".", "~")
        )
        if local.is_dir():
            run_folder = _run_folder_message(local, hparams_file)
            if run_folder:
                raise FileNotFoundError(run_folder)
            if not (local / hparams_file).is_file():
                raise FileNotFoundError(
                    f"{local} has no {hparams_file}: is it a model folder "
                    "written by `python -m lobes.deploy.export`? (A pretraining "
                    "save folder must be exported first.)"
                )
            source = str(local.absolute())
        elif looks_local:
            raise FileNotFoundError(
                f"Model folder {source} does not exist (write one with "
                "`python -m lobes.deploy.export --checkpoint <save folder> --out <folder>`)."
            )
        if not trust_yaml:
            from speechbrain.utils.fetching import fetch

            from lobes.deploy.model_yaml import check_model_yaml

            fetch_kwargs = {k: kwargs[k] for k in ("local_strategy", "fetch_config") if k in kwargs}
            path = fetch(filename=hparams_file, source=source, savedir=savedir,
                         save_filename=None, **fetch_kwargs)
            check_model_yaml(
                Path(path).read_text(encoding="utf-8"), str(path), kwargs.get("overrides")
            )
        return super().from_hparams(
            source, hparams_file=hparams_file, savedir=savedir, **kwargs
        )

    @property
    def num_hidden_states(self):
        """L+1: the number of hidden states returned."""
        return self.mods.encoder.num_hidden_states

    def load_audio(self, path, savedir=None):
        """Reads ``path`` as mono at the model's rate (``lobes.dataio.audio``)."""
        del savedir
        return load_audio(str(path), self.hparams.sample_rate)

    def encode_batch(self, wavs, wav_lens=None, layer_weights=None):
        """Encodes a batch of waveforms.

        Arguments
        ---------
        wavs : torch.Tensor
            (B, samples) or (samples,) at ``sample_rate``, right-padded.
        wav_lens : torch.Tensor, optional
            (B,) relative lengths in [0, 1]; all 1 by default.
        layer_weights : sequence or torch.Tensor, optional
            L+1 weights of the hidden states, used as given (e.g. a probe's
            ``WeightedLayerSum.layer_weights()``).

        Returns
        -------
        EncodedBatch
            ``hidden_states`` (L+1 x (B, T', D)), ``lengths``, ``frames``,
            ``weighted_sum``.
        """
        wavs = torch.as_tensor(wavs)
        if wavs.dim() == 1:
            wavs = wavs.unsqueeze(0)
        if wavs.dim() != 2:
            raise ValueError(
                f"encode_batch takes waveforms (batch, samples); got shape "
                f"{tuple(wavs.shape)}. Mix channels down first."
            )
        wavs = wavs.float().to(self.device)
        if wav_lens is None:
            wav_lens = torch.ones(wavs.shape[0], device=self.device)
        wav_lens = torch.as_tensor(wav_lens, dtype=torch.float32).to(self.device)
        encoder = self.mods.encoder
        weights = None
        if layer_weights is not None:
            weights = torch.as_tensor(layer_weights, dtype=torch.float32).to(self.device)
            if weights.shape != (encoder.num_hidden_states,):
                raise ValueError(
                    f"layer_weights has shape {tuple(weights.shape)}; this "
                    f"encoder has {encoder.num_hidden_states} hidden states "
                    f"({encoder.num_hidden_states - 1} layers + the input)."
                )
        with torch.no_grad():
            feats = self.mods.compute_features(wavs)
            self._check_long_enough(feats, wav_lens)
            feats = self.mods.normalizer(feats, wav_lens)
            with self.inference_ctx:
                _, hidden = encoder(feats, wav_lens, return_hidden=True)
            hidden = [h.float() for h in hidden]
            T = feats.shape[1]
            frames = encoder.output_lengths(
                torch.round(wav_lens * T).long().clamp(1, T)
            )
            weighted = None
            if weights is not None:
                weighted = torch.einsum("l,lbtd->btd", weights, torch.stack(hidden))
        return EncodedBatch(
            hidden_states=hidden,
            lengths=frames.float() / hidden[0].shape[1],
            frames=frames,
            weighted_sum=weighted,
        )

    def min_feature_frames(self):
        """The fewest fbank frames (10 ms each) the encoder takes: its
        front-end's reflect padding needs a few frames after each stride
        (found once, on zeros)."""
        if getattr(self, "_min_frames", None) is None:
            encoder = self.mods.encoder
            n_mels = (getattr(encoder, "config", None) or {}).get("n_mels", 80)
            self._min_frames = 1
            for frames in range(1, 257):
                try:
                    with torch.no_grad():
                        encoder(torch.zeros(1, frames, n_mels, device=self.device), torch.ones(1, device=self.device))
                except (IndexError, RuntimeError, ValueError):
                    continue
                self._min_frames = frames
                break
        return self._min_frames

    def _check_long_enough(self, feats, wav_lens):
        """Refuses, with a clear error, audio too short for one frame."""
        T = feats.shape[1]
        frames = torch.round(wav_lens.float() * T).long().clamp(0, T)
        need = self.min_feature_frames()
        short = [i for i, n in enumerate(frames.tolist()) if n < need]
        if short:
            seconds = [frames[i].item() * 0.01 for i in short]
            raise ValueError(
                f"Audio too short for this encoder: {len(short)} input(s) "
                f"(batch index {short[:10]}) of {', '.join(f'{s * 1000:.0f} ms' for s in seconds[:10])}, "
                f"give {', '.join(str(frames[i].item()) for i in short[:10])} feature frame(s); "
                f"it needs at least {need} ({need * 10} ms of audio) to give one output frame."
            )

    def encode_file(self, path, layer_weights=None):
        """Encodes one audio file (any sample rate; channels are averaged).

        Returns
        -------
        EncodedBatch
            With a batch of one.

        Raises
        ------
        lobes.dataio.audio.AudioReadError
            The file cannot be read.
        ValueError
            The audio is too short to give one encoder frame (named).
        """
        wav = self.load_audio(path)
        try:
            return self.encode_batch(wav.unsqueeze(0), torch.ones(1), layer_weights)
        except ValueError as err:
            if str(err).startswith("Audio too short"):
                raise ValueError(
                    f"{path}: {wav.shape[-1] / self.hparams.sample_rate * 1000:.0f} ms "
                    f"of audio is too short for this encoder: it needs at least "
                    f"{self.min_feature_frames() * 10} ms to give one output frame."
                ) from None
            raise

    def forward(self, wavs, wav_lens=None):
        """The hidden states of ``encode_batch`` (list of L+1 (B, T', D))."""
        return self.encode_batch(wavs, wav_lens).hidden_states
