#!/usr/bin/env python3
"""A word n-gram language model in ARPA format, estimated in pure Python.

The LibriSpeech ASR probe decodes with a KenLM n-gram (``kenlm_model_path``);
for the real task that is LibriSpeech's own 4-gram
(https://www.openslr.org/11, ``4-gram.arpa``). KenLM's estimator (``lmplz``)
is not part of the ``kenlm`` Python package, so this script writes the small
LM of the demo: interpolated Kneser-Ney (modified-KN-style discount per
order, ``D = n1 / (n1 + 2 n2)``) over the sentences it reads, with ``<s>``,
``</s>`` and ``<unk>``, as an ARPA file that KenLM (and SpeechBrain's
``CTCBeamSearcher``) load. It holds everything in memory: fine for the
thousands of sentences of a demo, not for LibriSpeech's 800M-word LM corpus.

Input: text files of one sentence per line, or LibriSpeech folders (every
``*.trans.txt`` under them, the utterance ID of each line dropped). Words
are upper-cased (LibriSpeech transcripts are).

    python tools/make_ngram_lm.py demo_data/LibriSpeech/train-clean-100 \\
        --order 3 --out results/demo_lm/3-gram.arpa

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import argparse
import math
import os
from collections import defaultdict
from pathlib import Path

BOS, EOS, UNK = "<s>", "</s>", "<unk>"


def read_sentences(paths):
    """Sentences (lists of upper-case words) of text files and LibriSpeech
    folders.

    Arguments
    ---------
    paths : list of str or Path
        Text files (one sentence per line) or folders holding
        ``*.trans.txt`` files (``<utterance id> <words>`` per line).

    Returns
    -------
    list of list of str

    Example
    -------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "19-198.trans.txt").write_text("19-198-0000 NORTHANGER ABBEY\\n")
    >>> _ = (folder / "text.txt").write_text("a plain line\\n\\n")
    >>> read_sentences([folder, folder / "text.txt"])
    [['NORTHANGER', 'ABBEY'], ['A', 'PLAIN', 'LINE']]
    """
    sentences = []
    for path in map(Path, paths):
        if path.is_dir():
            files = sorted(path.rglob("*.trans.txt"))
            if not files:
                raise FileNotFoundError(
                    f"{path} holds no *.trans.txt file: give a LibriSpeech "
                    "folder or text files of one sentence per line."
                )
            for f in files:
                for line in f.read_text(encoding="utf-8").splitlines():
                    words = line.split()[1:]
                    if words:
                        sentences.append([w.upper() for w in words])
        elif path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.split():
                    sentences.append(line.upper().split())
        else:
            raise FileNotFoundError(f"LM text {path} does not exist.")
    if not sentences:
        raise ValueError(f"No sentence in {', '.join(map(str, paths))}.")
    return sentences


def _discount(counts):
    """Kneser-Ney discount n1 / (n1 + 2 n2) of a count table (0.5 when the
    counts of counts do not give one in (0, 1))."""
    n1 = sum(1 for c in counts.values() if c == 1)
    n2 = sum(1 for c in counts.values() if c == 2)
    d = n1 / (n1 + 2 * n2) if n1 + n2 else 0.0
    return d if 0.0 < d < 1.0 else 0.5


def estimate(sentences, order=3):
    """Interpolated Kneser-Ney n-gram probabilities and backoff weights.

    Arguments
    ---------
    sentences : list of list of str
        Training sentences (words).
    order : int
        N of the n-grams (>= 1).

    Returns
    -------
    list of dict
        ``grams[k - 1]`` maps each k-gram (a tuple of words) seen in training
        to ``(log10 p, log10 backoff)``, the backoff being that of the k-gram
        as a context (0.0 at the highest order). The unigrams also hold
        ``<unk>`` and ``<s>`` (log10 p = -99, as in every ARPA file).

    Example
    -------
    >>> grams = estimate([["A", "B"], ["A", "C"]], order=2)
    >>> sorted(grams[1])
    [('<s>', 'A'), ('A', 'B'), ('A', 'C'), ('B', '</s>'), ('C', '</s>')]
    >>> p = {w: 10 ** grams[0][(w,)][0] for w in ("A", "B", "C", "</s>", "<unk>")}
    >>> round(sum(p.values()), 6)
    1.0
    """
    if order < 1:
        raise ValueError(f"--order must be at least 1, got {order}.")
    raw = [defaultdict(int) for _ in range(order)]  # raw[k - 1]: k-gram counts
    for words in sentences:
        seq = [BOS, *words, EOS]
        for k in range(1, order + 1):
            for i in range(len(seq) - k + 1):
                if k > 1 or seq[i] != BOS:
                    raw[k - 1][tuple(seq[i:i + k])] += 1
    # Kneser-Ney counts: raw at the highest order and for n-grams starting
    # with <s>; elsewhere the number of distinct words preceding the n-gram
    counts = [defaultdict(int) for _ in range(order)]
    counts[order - 1] = raw[order - 1]
    for k in range(order - 1, 0, -1):
        for gram in raw[k]:
            counts[k - 1][gram[1:]] += 1
        for gram, c in raw[k - 1].items():
            if gram[0] == BOS:
                counts[k - 1][gram] = c

    probs = [dict() for _ in range(order)]  # probs[k - 1][k-gram]: p(last | rest)
    backoffs = [dict() for _ in range(order)]  # backoffs[k - 1][k-gram as context]

    def prob(gram):  # p(gram[-1] | gram[:-1]), backing off to shorter contexts
        k = len(gram)
        if k == 1:
            return probs[0].get(gram, probs[0][(UNK,)])
        if gram in probs[k - 1]:
            return probs[k - 1][gram]
        return backoffs[k - 2].get(gram[:-1], 1.0) * prob(gram[1:])

    # unigrams: discounted counts plus the discounted mass spread uniformly
    vocab = sorted({g[0] for g in counts[0]} | {UNK})  # </s> in, <s> out
    d = _discount(counts[0])
    total = sum(counts[0].values())
    uniform = d * len(counts[0]) / total / len(vocab)
    for w in vocab:
        probs[0][(w,)] = max(counts[0].get((w,), 0) - d, 0.0) / total + uniform
    # higher orders: discounted counts plus the context's backoff mass times
    # the lower-order probability (so each context's distribution sums to 1)
    for k in range(2, order + 1):
        table = counts[k - 1]
        d = _discount(table)
        context_total, context_types = defaultdict(int), defaultdict(int)
        for gram, c in table.items():
            context_total[gram[:-1]] += c
            context_types[gram[:-1]] += 1
        for h in context_total:
            backoffs[k - 2][h] = d * context_types[h] / context_total[h]
        for gram, c in table.items():
            h = gram[:-1]
            probs[k - 1][gram] = (c - d) / context_total[h] + backoffs[k - 2][h] * prob(gram[1:])

    grams = [dict() for _ in range(order)]
    for k in range(1, order + 1):
        for gram, p in probs[k - 1].items():
            grams[k - 1][gram] = (math.log10(p), math.log10(backoffs[k - 1].get(gram, 1.0)))
    grams[0][(BOS,)] = (-99.0, math.log10(backoffs[0].get((BOS,), 1.0)))
    return grams


def write_arpa(grams, path):
    """Writes ``grams`` (``estimate``'s result) as an ARPA file, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n\\data\\\n")
        for k, table in enumerate(grams, 1):
            f.write(f"ngram {k}={len(table)}\n")
        for k, table in enumerate(grams, 1):
            f.write(f"\n\\{k}-grams:\n")
            for gram in sorted(table):
                logp, logb = table[gram]
                line = f"{logp:.6f}\t{' '.join(gram)}"
                if k < len(grams):
                    line += f"\t{logb:.6f}"
                f.write(line + "\n")
        f.write("\n\\end\\\n")
    os.replace(tmp, path)


def main(argv=None):
    """Command line: text in, ARPA out."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("text", nargs="+", help="text files or LibriSpeech folders")
    parser.add_argument("--order", type=int, default=3)
    parser.add_argument("--out", required=True, help="the .arpa file to write")
    args = parser.parse_args(argv)
    sentences = read_sentences(args.text)
    grams = estimate(sentences, args.order)
    write_arpa(grams, args.out)
    sizes = ", ".join(f"{len(t)} {k}-grams" for k, t in enumerate(grams, 1))
    print(f"{args.out}: {len(sentences)} sentences, {sizes}")


if __name__ == "__main__":
    main()
