"""One module per tab of the TUI; each pane redraws itself from the whole SwarmState."""
