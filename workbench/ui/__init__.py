"""What a user touches: the CLI, plots, the tuning panel, notebook helpers, the failure lab and the browser page."""
