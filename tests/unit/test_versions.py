"""lobes.utils.versions: the SpeechBrain found is checked when ``lobes`` is
imported, against the range ``setup.cfg`` installs."""

import configparser
import subprocess
import sys

import pytest
from conftest import REPO

from lobes.utils import versions


def import_lobes_with(tmp_path, version, env=None):
    """``import lobes`` in a fresh interpreter whose ``speechbrain`` is a
    package reporting ``version`` (as a fork's ``version.txt`` does)."""
    fake = tmp_path / "speechbrain"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise RuntimeError('the version is read without importing')\n")
    (fake / "version.txt").write_text(version + "\n")
    return subprocess.run(
        [sys.executable, "-W", "always", "-c", "import lobes"],
        capture_output=True, text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path), **(env or {})},
    )


@pytest.mark.parametrize("version", ["0.5.16", "1.0.3"])
def test_an_older_speechbrain_is_refused_at_import(version, tmp_path):
    proc = import_lobes_with(tmp_path, version)
    assert proc.returncode == 1
    message = proc.stderr.strip().splitlines()[-1]
    assert message.startswith("lobes.utils.versions.SpeechBrainVersionError: ")
    assert f"the SpeechBrain at {tmp_path / 'speechbrain'} is {version}" in message
    assert versions.SUPPORTED in message and "pip install --no-deps -e" in message
    # At their own risk, users may go on.
    again = tmp_path / "again"
    again.mkdir()
    proc = import_lobes_with(again, version, {"BRQ_SKIP_SPEECHBRAIN_CHECK": "1"})
    assert proc.returncode == 0 and "going on anyway" in proc.stderr


@pytest.mark.parametrize("version, accepted, warned", [
    ("1.1.0", True, False), ("1.1.2", True, False),
    ("1.0.4", True, False),  # SpeechBrain's v1.1.0 git tag says 1.0.4
    ("1.2.0", True, True), ("develop", True, True),
])
def test_supported_and_newer_versions_import(version, accepted, warned, tmp_path):
    proc = import_lobes_with(tmp_path, version)
    assert (proc.returncode == 0) == accepted, proc.stderr
    assert ("UserWarning" in proc.stderr) == warned, proc.stderr


def test_setup_cfg_installs_the_range_checked_at_import():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    requires = [r.strip() for r in cfg["options"]["install_requires"].splitlines()]
    (line,) = [r for r in requires if r.startswith("speechbrain")]
    # setup.cfg admits 1.0.4 too: the v1.1.0 tag of a fork (PyPI has no 1.0.4)
    assert line == "speechbrain>=1.0.4,<1.2"
    assert versions.SUPPORTED == ">=1.1.0,<1.2" and versions.ALIASES == {"1.0.4": "1.1.0"}
