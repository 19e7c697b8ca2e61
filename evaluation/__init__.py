"""Sample-quality evaluation: FID/KID/IS through torch-fidelity (`evaluation.metrics`) and the
offline digits feature extractor (`evaluation.digits_features`)."""
