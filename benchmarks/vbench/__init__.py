"""VBench's quality dimensions, our own implementation (docs/vbench/)."""
