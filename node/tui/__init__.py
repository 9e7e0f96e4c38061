"""`potluck tui`: the host's live view of a run, fed by the coordinator's read-only Watch stream."""
