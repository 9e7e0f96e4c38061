"""potluck: decentralized RL post-training. The wire contract lives in proto/, shared code here."""

__version__ = "0.1.0"
