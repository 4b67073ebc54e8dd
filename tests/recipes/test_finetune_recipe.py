"""The fine-tuning recipe (recipes/LibriSpeech/ASR/CTC-BEST-RQ-linear): a
pretrained encoder trained whole with a CTC head, end to end on the demo
corpus (characters and BPE), exact resume, the encoder's freeze steps and
learning rate, the random-initialisation baseline, the Libri-light
fine-tuning sets, the three YAMLs."""

import csv
import re
import shutil

import pytest
import torch
import yaml
from conftest import PAPER_MIXERS, REPO, load_script, run_recipe, tiny_pretrained
from hyperpyyaml import load_hyperpyyaml
from speechbrain.dataio.batch import PaddedBatch
from speechbrain.dataio.encoder import CTCTextEncoder

from lobes.brains.ctc import add_output_layer
from lobes.deploy.loading import (
    encoder_from_checkpoint,
    encoder_state_dict,
    resolve_checkpoint,
)
from lobes.recipe import _plain_yaml

RECIPE = REPO / "recipes/LibriSpeech/ASR/CTC-BEST-RQ-linear"
TEST_SETS = ["test-clean", "test-other"]
YAMLS = ["train_clean_100", "train_960", "librilight_10h"]


def finetune_args(pretrained, data, out, epochs=1, extra=(), yaml_name="train_clean_100"):
    """Command line of a demo-size fine-tuning run: the recipe's defaults
    (augmentation, masking, AdamW, NewBob, beam search) with a small head,
    the demo's short utterances and a small beam."""
    return [
        f"hparams/{yaml_name}.yaml",
        f"--data_folder={data}",
        f"--pretrained_path={pretrained}",
        f"--output_folder={out}",
        f"--number_of_epochs={epochs}",
        "--precision=fp32",
        "--num_workers=0",
        "--dnn_neurons=64",
        "--avoid_if_longer_than=3.0",  # 21 of the 128 demo training utterances
        "--test_beam_search={beam_size: 4}",
        *extra,
    ]


def log_lines(out):
    return (out / "train_log.txt").read_text().splitlines()


def latest_ckpt(out):
    ckpts = sorted((out / "save").glob("CKPT+*"))
    assert ckpts, f"no checkpoint in {out / 'save'}"
    return ckpts[-1]


def check_run(out, kinds=("greedy", "beam")):
    """Validation WER/CER each epoch; per test set greedy and beam WER/CER
    in the log and a WER file for each decoding."""
    lines = log_lines(out)
    assert any(re.search(r"valid WER: [\d.e+-]+, valid CER: [\d.e+-]+", l) for l in lines), lines
    for test_set in TEST_SETS:
        line = next(l for l in lines if f"test set: {test_set}" in l)
        assert re.search(r"test WER: .*test CER: .*test WER_beam: .*test CER_beam: ", line), line
        for kind in kinds:
            assert "%WER" in (out / f"wer_{test_set}_{kind}.txt").read_text()


def test_finetune_characters_end_to_end(demo_data, pretrained_demo, tmp_path):
    """One epoch from the demo encoder: the encoder is trained (its weights
    move from the pretrained ones), the feature statistics are not, and the
    checkpoint is itself a pretrained_path of the fine-tuned encoder."""
    pretrained = pretrained_demo("summarymixing") / "save"
    out = tmp_path / "ft"
    run_recipe(RECIPE, finetune_args(pretrained, demo_data / "LibriSpeech", out))
    check_run(out)
    ckpt = latest_ckpt(out)
    before, after = encoder_state_dict(pretrained), encoder_state_dict(ckpt)
    moved = [k for k, v in before.items() if torch.is_tensor(v) and not torch.equal(v, after[k])]
    assert len(moved) > 0.9 * sum(torch.is_tensor(v) for v in before.values()), moved
    assert after["_extra_state"]["layerdrop_prob"] == 0.0  # encoder_runtime
    assert yaml.safe_load((out / "encoder.yaml").read_text())["layerdrop_prob"] == 0.0
    _, norm_before, _ = resolve_checkpoint(pretrained)
    stats = [torch.load(p, weights_only=False) for p in (norm_before, ckpt / "normalizer.ckpt")]
    torch.testing.assert_close(stats[1]["glob_mean"], stats[0]["glob_mean"])
    assert encoder_from_checkpoint(ckpt).config["mixer"] == "summarymixing"
    labels = CTCTextEncoder()
    labels.load(out / "save" / "label_encoder.txt")
    assert labels.ind2lab[0] == "<blank>" and "<unk>" in labels.lab2ind
    # each optimiser starts at its own learning rate
    assert re.search(r"lr_model: 3.00e-04, lr_encoder: 5.00e-05, encoder_frozen: False", log_lines(out)[0])


def test_finetune_bpe_end_to_end(demo_data, pretrained_demo, tmp_path):
    """SentencePiece BPE units trained on the training transcripts, blank
    <pad> at 0; the beam search decodes the pieces to words."""
    pretrained = pretrained_demo("summarymixing") / "save"
    out = tmp_path / "ft_bpe"
    run_recipe(RECIPE, finetune_args(pretrained, demo_data / "LibriSpeech", out,
                                     extra=["--token_type=bpe", "--output_neurons=48"]))
    check_run(out)
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(out / "save" / "48_bpe.model"))
    assert sp.vocab_size() == 48 and sp.id_to_piece(0) == "<pad>" and sp.id_to_piece(1) == "<unk>"
    assert any(sp.id_to_piece(i).startswith("▁") and len(sp.id_to_piece(i)) > 2 for i in range(48))
    # the output layer has one output per piece
    head = torch.load(latest_ckpt(out) / "head.ckpt")
    assert head["1.w.weight"].shape[0] == 48


def test_resume_is_exact(demo_data, pretrained_demo, tmp_path):
    """2 epochs, or 1 then a restart to 2 with the same command: the same
    encoder, head and optimiser states (augmentation, masks, dropout and
    batch order continue identically)."""
    pretrained = pretrained_demo("summarymixing") / "save"
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    common = ["--avoid_if_longer_than=2.6", "--test_splits=[test-clean]", "--use_beam_search=False"]

    def run(out, epochs):
        extra = [*common, f"--test_csv=[{out}/test-clean.csv]"]
        return run_recipe(RECIPE, finetune_args(pretrained, demo_data / "LibriSpeech", out,
                                                epochs=epochs, extra=extra))

    run(straight, 2)
    run(resumed, 1)
    run(resumed, 2)
    a, b = latest_ckpt(straight), latest_ckpt(resumed)
    steps = [yaml.safe_load((c / "brain.ckpt").read_text())["optimizer_step"] for c in (a, b)]
    assert steps[0] == steps[1] > 2, steps
    for name in ("encoder.ckpt", "head.ckpt"):
        sa, sb_ = torch.load(a / name, weights_only=False), torch.load(b / name, weights_only=False)
        for key, value in sa.items():
            if torch.is_tensor(value):
                torch.testing.assert_close(sb_[key], value, msg=f"{name}: {key}")
    for name in ("encoder_optimizer.ckpt", "model_optimizer.ckpt"):
        oa, ob = torch.load(a / name), torch.load(b / name)
        assert oa["state"], name
        for sa, sb_ in zip(oa["state"].values(), ob["state"].values()):
            torch.testing.assert_close(sb_["exp_avg"], sa["exp_avg"], msg=name)
    valid = [[l.split(" - ")[-1] for l in log_lines(d) if l.startswith("epoch: 2")] for d in (straight, resumed)]
    assert valid[0] == valid[1] and valid[0], valid


# ---------------------------------------------------------------------------
# Freeze steps and learning rates, on the recipe's Brain and YAML
# ---------------------------------------------------------------------------
def recipe_brain(tmp_path, pretrained=None, **overrides):
    """The recipe's ``ASR`` Brain on a tiny random encoder (or the one of
    ``pretrained``), built from ``train_clean_100.yaml`` as train.py builds
    it (no data)."""
    train_py = load_script(RECIPE / "train.py", "finetune_train_under_test")
    pretrained = pretrained or tiny_pretrained(tmp_path / "enc")
    with open(RECIPE / "hparams/train_clean_100.yaml") as fin:
        hparams = load_hyperpyyaml(fin, {
            "pretrained_path": str(pretrained), "data_folder": str(tmp_path),
            "output_folder": str(tmp_path / "out"), "dnn_neurons": 16,
            "encoder_runtime": {"dropout": 0.0, "layerdrop_prob": 0.0}, **overrides,
        })
    labels = CTCTextEncoder()
    labels.insert_blank(index=0)
    labels.update_from_iterable("AB C", sequence_input=True)
    add_output_layer(hparams, labels)
    train_py.initialise_encoder(pretrained, hparams["encoder"], hparams["normalize"],
                                from_pretrained=hparams["init_from_pretrained"])
    brain = train_py.ASR(modules=hparams["modules"], hparams=hparams,
                         run_opts={"device": "cpu", "precision": "fp32"}, checkpointer=None)
    brain.tokenizer = labels
    return brain, hparams, pretrained


def toy_batch(n=3):
    gen = torch.Generator().manual_seed(1)
    return PaddedBatch([
        {"id": f"u{i}", "sig": 0.1 * torch.randn(16000 + 2000 * i, generator=gen),
         "tokens": torch.tensor([1, 2, 3, 4, 1][: 3 + i % 3]), "wrd": "AB C"}
        for i in range(n)
    ])


def snapshot(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def adam_step_size(before, after, lr, weight_decay=0.001):
    """The size of AdamW's first update of each parameter element, weight
    decay removed: ``lr * |g| / (|g| + eps)``, i.e. ``lr`` wherever the
    gradient is not tiny."""
    sizes = []
    for name, old in before.items():
        step = (after[name] - old * (1 - lr * weight_decay)).abs().flatten()
        sizes.append(step)
    sizes = torch.cat(sizes)
    return sizes[sizes > 0.01 * lr]


def test_encoder_changes_only_after_the_freeze_steps_with_its_own_lr(tmp_path):
    """With freeze_encoder_steps: 2, the first two optimizer steps move the
    head only (no gradient reaches the encoder, its optimiser holds no
    state); the third moves the encoder, by AdamW's first step of size
    lr_encoder, while the head's first step had size lr."""
    brain, hparams, _ = recipe_brain(tmp_path, freeze_encoder_steps=2, lr=0.003, lr_encoder=0.0002)
    brain.on_fit_start()
    brain.modules.train()
    encoder, head = hparams["encoder"], hparams["model"]
    enc0, head0 = snapshot(encoder), snapshot(head)
    batch = toy_batch()
    assert brain.encoder_frozen()
    brain.fit_batch(batch)
    enc1, head1 = snapshot(encoder), snapshot(head)
    assert all(torch.equal(enc0[n], enc1[n]) for n in enc0)
    assert all(p.grad is None for p in encoder.parameters())
    assert not brain.encoder_optimizer.state
    head_steps = adam_step_size(head0, head1, 0.003)
    assert len(head_steps) > 100
    torch.testing.assert_close(head_steps.median(), torch.tensor(0.003), rtol=1e-3, atol=0)
    brain.fit_batch(batch)
    assert all(torch.equal(enc0[n], p) for n, p in snapshot(encoder).items())
    assert brain.optimizer_step == 2 and not brain.encoder_frozen()  # the next step trains it
    brain.fit_batch(batch)
    enc3 = snapshot(encoder)
    moved = [n for n in enc0 if not torch.equal(enc0[n], enc3[n])]
    assert len(moved) == len(enc0), set(enc0) - set(moved)
    enc_steps = adam_step_size(enc0, enc3, 0.0002)
    assert len(enc_steps) > 1000
    torch.testing.assert_close(enc_steps.median(), torch.tensor(0.0002), rtol=1e-3, atol=0)
    assert enc_steps.max() <= 0.0002 * 1.01
    assert brain.encoder_optimizer.param_groups[0]["lr"] == 0.0002
    assert brain.model_optimizer.param_groups[0]["lr"] == 0.003


def test_freeze_encoder_keeps_it_frozen(tmp_path):
    """freeze_encoder: True (SpeechBrain's freeze_bestrq): the encoder never
    moves, whatever the step; the head trains."""
    brain, hparams, _ = recipe_brain(tmp_path, freeze_encoder=True)
    brain.on_fit_start()
    brain.modules.train()
    enc0, head0 = snapshot(hparams["encoder"]), snapshot(hparams["model"])
    for _ in range(3):
        brain.fit_batch(toy_batch())
    assert all(torch.equal(enc0[n], p) for n, p in snapshot(hparams["encoder"]).items())
    assert any(not torch.equal(head0[n], p) for n, p in snapshot(hparams["model"]).items())


def test_random_initialisation_baseline(tmp_path):
    """init_from_pretrained: False builds the checkpoint's architecture with
    random weights, but the pretraining's feature statistics."""
    _, pre, pretrained = recipe_brain(tmp_path / "a")
    _, rnd, _ = recipe_brain(tmp_path / "b", pretrained, init_from_pretrained=False)
    saved = torch.load(pretrained / "encoder.ckpt", weights_only=False)
    for hparams, equal in ((pre, True), (rnd, False)):
        state = hparams["encoder"].state_dict()
        same = [torch.equal(state[k], v) for k, v in saved.items()
                if torch.is_tensor(v) and v.dim() > 1 and v.float().std() > 0]  # drawn at random
        assert all(same) if equal else not any(same)
        assert hparams["encoder"].config == pre["encoder"].config
    stats = torch.load(pretrained / "normalizer.ckpt", weights_only=False)
    torch.testing.assert_close(rnd["normalize"].glob_mean, stats["glob_mean"])


def test_bad_settings_are_refused(tmp_path):
    train_py = load_script(RECIPE / "train.py", "finetune_train_checks")
    with pytest.raises(ValueError, match="token_type: 'wordpiece' in the YAML"):
        train_py.dataio_prepare({"token_type": "wordpiece"})
    with pytest.raises(ValueError, match="librilight_subset: 10h and train_splits: .*both set"):
        train_py.prepare_data({"librilight_subset": "10h", "train_splits": ["train-clean-100"]})
    with pytest.raises(ValueError, match="Encoder override.*d_model"):
        recipe_brain(tmp_path, encoder_runtime={"d_model": 64})


# ---------------------------------------------------------------------------
# The YAMLs and the Libri-light sets
# ---------------------------------------------------------------------------
def test_the_three_yamls_differ_only_in_their_data_and_schedule():
    """One recipe, three training sets: the YAMLs agree on everything but
    the training data and its schedule (no silent drift)."""
    docs = {name: _plain_yaml((RECIPE / f"hparams/{name}.yaml").read_text()) for name in YAMLS}
    expected = {
        "train_960": {"output_folder", "train_splits", "number_of_epochs", "dynamic_batching"},
        "librilight_10h": {"output_folder", "train_splits", "librilight_folder", "librilight_subset",
                           "number_of_epochs", "freeze_encoder_steps"},
    }
    base = docs["train_clean_100"]
    for name, keys in expected.items():
        assert set(docs[name]) == set(base), name
        differ = {k for k in base if docs[name][k] != base[k]}
        assert differ == keys, (name, differ ^ keys)


def test_librilight_sets_prepared_from_the_archive_layout(demo_data, tmp_path):
    """10min = fold 0 of 1h, 1h = its six folds, 10h = 1h + 9h; clean and
    other alike; a missing fold is refused by name."""
    from demo_corpus import make_demo_corpus

    root = make_demo_corpus(demo_data, ["librispeech_finetuning"])["librispeech_finetuning"]
    prep = load_script(RECIPE / "librispeech_finetuning_prepare.py", "ll_prepare_under_test")
    counts = {}
    for subset in ("10min", "1h", "10h"):
        out = tmp_path / subset
        prep.prepare_librilight_finetuning(root.parent, out, subset)  # the parent works too
        with open(out / "train.csv", newline="") as fin:
            rows = list(csv.DictReader(fin))
        counts[subset] = len(rows)
        flacs = {p.stem for f in prep.SUBSETS[subset] for p in (root / f).rglob("*.flac")}
        assert {r["ID"] for r in rows} == flacs
        assert all(r["wrd"] and r["spk_id"] == r["ID"].split("-")[0] for r in rows)
    assert counts == {"10min": 4, "1h": 24, "10h": 56}
    broken = tmp_path / "broken"
    shutil.copytree(root, broken)
    shutil.rmtree(broken / "9h")
    prep.prepare_librilight_finetuning(broken, tmp_path / "ok", "1h")
    with pytest.raises(FileNotFoundError, match=r"lacks the folder\(s\) 9h of the 10h set"):
        prep.prepare_librilight_finetuning(broken, tmp_path / "no", "10h")


# ---------------------------------------------------------------------------
# Heavier: every mixer, the Libri-light YAML, DDP
# ---------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("units", ["char", "bpe"])
@pytest.mark.parametrize("mixer", PAPER_MIXERS)
def test_every_mixer_finetunes(demo_data, pretrained_demo, tmp_path, mixer, units):
    pretrained = pretrained_demo(mixer, epochs=1) / "save"
    extra = ["--token_type=bpe", "--output_neurons=48"] if units == "bpe" else []
    out = tmp_path / "ft"
    run_recipe(RECIPE, finetune_args(pretrained, demo_data / "LibriSpeech", out,
                                     extra=[f"--mixer={mixer}", *extra]))
    check_run(out)


@pytest.mark.slow
def test_librilight_10h_yaml_end_to_end(demo_data, pretrained_demo, tmp_path):
    from demo_corpus import make_demo_corpus

    root = make_demo_corpus(demo_data, ["librispeech_finetuning"])["librispeech_finetuning"]
    out = tmp_path / "ll"
    run_recipe(RECIPE, finetune_args(
        pretrained_demo("summarymixing") / "save", demo_data / "LibriSpeech", out,
        yaml_name="librilight_10h", extra=[f"--librilight_folder={root}", "--freeze_encoder_steps=1"]))
    check_run(out)
    with open(out / "train.csv", newline="") as fin:
        assert len(list(csv.DictReader(fin))) == 56
    assert "encoder_frozen: False" in log_lines(out)[0]  # 1 frozen step, then trained


@pytest.mark.slow
def test_ddp_two_processes(demo_data, pretrained_demo, tmp_path):
    """torchrun with 2 gloo processes: trains, checkpoints once, tests."""
    out = tmp_path / "ddp"
    run_recipe(RECIPE, finetune_args(pretrained_demo("summarymixing") / "save",
                                     demo_data / "LibriSpeech", out,
                                     extra=["--dynamic_batching=True",
                                            "--dynamic_batch_sampler={max_batch_length: 12, num_buckets: 2, shuffle: True, batch_ordering: random}"]),
               nproc=2, timeout=1500)
    check_run(out)
    assert len(list((out / "save").glob("CKPT+*"))) == 1
