"""Jobs the command runs end to end (one module per job)."""
