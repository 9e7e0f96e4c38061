"""bench.broadcast runs end to end in its quick mode (3 real peers, a 3-chunk version)."""
import json
import subprocess
import sys

from tests.procs import ROOT


def test_quick_broadcast_reports_every_figure():
    done = subprocess.run([sys.executable, "-m", "bench.broadcast", "--quick", "--json"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["quick"] is True and result["all_verified"] is True and result["chunks"] == 3
    assert set(result["runs"]) == set(result["coordinator_egress_copies"]) == {"3"}
    for n, run in result["runs"].items():
        # every node took every chunk once, from a peer or the coordinator; nobody held it before,
        # so the coordinator sent at least one copy, and never more than one per node
        assert run["chunks_from_peers"] + run["chunks_from_coordinator"] == int(n) * result["chunks"]
        assert 1.0 <= run["coordinator_egress_copies"] <= int(n) and run["bad_peers"] == 0
        assert 0 < run["seconds_until_first_holds"] <= run["seconds_until_all_hold"]
        assert run["coordinator_only_egress_copies"] == int(n)  # the same nodes, without their planes
    assert result["max_egress_copies"] == max(result["coordinator_egress_copies"].values())
