"""Everything Ray: Ray Data batch labeling and the Ray Serve endpoint, built on `restore`."""
