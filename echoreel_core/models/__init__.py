"""Model definitions, one module per model, with the official parameter names."""
