"""Memory probes of this process: resident set size and its high-water mark
(Linux ``/proc``, ``getrusage``).

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import os
import resource
import sys


def current_rss_mb():
    """Resident set size of this process now, in MB (Linux ``/proc``)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb():
    """High-water mark of this process' resident set size, in MB."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


def reset_peak_rss():
    """Resets the RSS high-water mark to the current RSS; False if the
    kernel does not allow it (then ``peak_rss_mb`` keeps the old peak)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
