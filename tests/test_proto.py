import subprocess
import sys

from protocol.proto_gen import ROOT


def test_generated_stubs_are_fresh():
    result = subprocess.run([sys.executable, "-m", "protocol.proto_gen", "--check"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
