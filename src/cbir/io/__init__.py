"""Image decoding, file discovery and tag reading."""
