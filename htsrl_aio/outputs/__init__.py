"""What a run leaves behind: its directory (config, metrics, summary, checkpoint) and the progress line."""
