"""The mounted filesystem and the `drive` command line."""
