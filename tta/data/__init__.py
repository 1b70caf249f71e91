"""Data: readers of on-disk layouts, the corruption engine, procedural datasets."""
