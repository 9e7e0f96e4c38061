"""The node's hardware probe: a measured speed, remembered in the node's home for a day."""
import json

import pytest
import torch

from node.hardware import SPEED_FILE, cached_tokens_per_s, probe


@pytest.fixture
def one_thread():
    """As the test nodes run (--threads 1): on a busy machine, more threads only contend."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_speed_is_measured_once_and_remembered(tmp_path, one_thread):
    hardware = probe("cpu", tmp_path)
    assert hardware.measured_tokens_per_s > 0 and hardware.ram_available_bytes > 0
    saved = json.loads((tmp_path / SPEED_FILE).read_text())
    assert saved["tokens_per_s"] == hardware.measured_tokens_per_s
    # A second probe reads the figure back instead of measuring again (a new measurement differs).
    assert cached_tokens_per_s("cpu", tmp_path) == hardware.measured_tokens_per_s
    saved["measured_at"] -= 2 * 24 * 3600  # two days old: measured afresh
    (tmp_path / SPEED_FILE).write_text(json.dumps(saved))
    fresh = cached_tokens_per_s("cpu", tmp_path)
    assert fresh > 0 and json.loads((tmp_path / SPEED_FILE).read_text())["measured_at"] > saved["measured_at"]
