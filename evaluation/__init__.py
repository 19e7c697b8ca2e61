"""Sample-quality evaluation: FID/KID/IS through torch-fidelity (`evaluation.metrics`), the
offline digits feature extractor (`evaluation.digits_features`), the FID Inception-v3 in plain
torch (`evaluation.inception`), and reference statistics kept in files (`evaluation.reference`)."""
