"""Curate stage: downloaded images to clean, captioned webdataset shards."""
