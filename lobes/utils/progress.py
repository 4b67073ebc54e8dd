"""Progress bars for the steps a user waits on (tqdm, as SpeechBrain's loops).

* :func:`progress`: a bar over the items of a long loop (audio checks at
  data preparation); it appears only once the loop has run for
  ``DELAY`` seconds, so quick runs print nothing.
* :class:`Steps`: a bar over the named steps of one long operation (export,
  conversion: loading, building, saving and reloading hundreds of MB).

``BRQ_NO_PROGRESS=1`` (or SpeechBrain's ``--noprogressbar`` where a recipe
passes it on) turns them off.

Authors
 * BEST-RQ linear-mixers contributors 2026
"""

import os

from tqdm import tqdm

DELAY = 2.0  # seconds before a loop's bar appears
ENV = "BRQ_NO_PROGRESS"


def disabled():
    """True when ``BRQ_NO_PROGRESS`` asks for no progress bars."""
    return os.environ.get(ENV, "") not in ("", "0")


def progress(iterable, total=None, desc=None, unit="it"):
    """``tqdm(iterable)``, shown once it has run for ``DELAY`` seconds.

    Example
    -------
    >>> sum(progress(range(5), desc="quick"))
    10
    """
    return tqdm(
        iterable, total=total, desc=desc, unit=unit, delay=DELAY,
        mininterval=1.0, dynamic_ncols=True, disable=disabled(),
    )


class Steps:
    """A bar over the named steps of one operation; ``done()`` after each.

    Example
    -------
    >>> with Steps("export", ["load", "save"]) as steps:
    ...     steps.done()
    ...     steps.done()
    >>> steps.bar.n
    2
    """

    def __init__(self, desc, labels):
        self.labels = list(labels)
        self.index = 0
        self.bar = tqdm(
            total=len(self.labels), desc=desc, unit="step", dynamic_ncols=True,
            bar_format="{desc}: {n}/{total} [{elapsed}] {postfix}",
            disable=disabled(),
        )
        if self.labels:
            self.bar.set_postfix_str(self.labels[0])

    def done(self):
        """The current step is done; the bar names the next one."""
        self.index += 1
        if self.index < len(self.labels):
            self.bar.set_postfix_str(self.labels[self.index], refresh=False)
        self.bar.update(1)

    def close(self):
        """Closes the bar."""
        self.bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
