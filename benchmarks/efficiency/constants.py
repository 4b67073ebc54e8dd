"""Names and constants shared by the modules of the efficiency benchmark.

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

from pathlib import Path

from lobes.nnet.mixers import mixer_names

REPO = Path(__file__).resolve().parents[2]
SPEECHBRAIN_REF = "speechbrain_relposmhaxl"
FLOOR = "floor"
# The paper's attention baseline: the encoder whose mixers the floor
# replaces, and the reference of the linear mixers' checks.
MHSA = "mhsa"
FLOOR_BASE = MHSA
# Models every other one gets a time and memory ratio to (when measured):
# the registry's quadratic mixers and SpeechBrain's encoder.
BASELINES = (*mixer_names(linear=False), SPEECHBRAIN_REF)
PROTOCOLS = ("default", "paper")
PRECISIONS = ("fp32", "bf16", "fp16")
# Tables, ratios, growth and checks use the fastest timed run: other
# processes only ever add time, so the minimum over interleaved runs is the
# least disturbed estimate. The CSV also has the median, the quartiles, the
# mean, the standard deviation and every run.
TIME_KEY = "time_min_s"
# Fewer timed runs per point than this: no pass/fail verdict is printed.
MIN_JUDGED_REPEATS = 5
FRAMES_PER_SECOND = 100  # 10 ms fbank hop
SAMPLE_RATE = 16000
N_MELS = 80
# The authors' memory_test_v2.py: batch 6 of 10, 20, ..., 80 s.
PAPER_BATCH = 6
PAPER_LENGTHS = "10,20,30,40,50,60,70,80"
PAPER_REPEATS = 10  # their EVAL_AVG_STEPS
