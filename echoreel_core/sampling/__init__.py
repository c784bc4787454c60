"""Noise schedules and samplers as small functions over tensors."""
