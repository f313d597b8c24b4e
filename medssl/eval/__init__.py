"""Evaluations on frozen features (linear probe, k-NN, segmentation probe, metadata probe)."""
