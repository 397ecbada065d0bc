"""Backbones, saved models, weights, the extractor that cuts them, the one Dense head, fine-tuned models."""
