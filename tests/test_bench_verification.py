"""bench.verification runs end to end in its quick mode and reports every figure, in range."""
import json
import subprocess
import sys

from tests.adversary import CHEATS
from tests.procs import ROOT


def test_quick_bench_reports_every_figure():
    done = subprocess.run([sys.executable, "-m", "bench.verification", "--quick", "--json"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["quick"] is True and result["honest_rollouts"] >= 100
    assert 0.0 <= result["false_positive_rate"] <= 1.0
    assert set(result["honest_worst"]) == set(result["tolerances"]) == set(result["honest_worst_over_tolerance"])
    assert all(value >= 0 for value in result["honest_worst"].values())
    assert set(result["detection_rate"]) == set(CHEATS) == set(result["cheat_shards_unchanged"])
    rates = [rate for rate in result["detection_rate"].values() if rate is not None]
    assert all(0.0 <= rate <= 1.0 for rate in rates) and result["detection_rate_min"] == min(rates)
    # A full decode chunk commits to k=128 values: the modulus and 128 coefficients, 2 bytes each.
    assert result["proof_bytes_per_32_tokens"] == 258
    assert result["proof_bytes_per_rollout"] >= 258  # the prompt chunk and at least one decode chunk
    assert result["prove_overhead"] > 0 and result["verify_over_generate"] > 0
    assert result["timing"]["rollouts"] == 128 and result["notes"]
