"""The drivefs server: the single source of truth for metadata, sharing, the changes feed and blob URLs."""
