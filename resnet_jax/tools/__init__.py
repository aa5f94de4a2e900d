"""Tools around the training core: speed (benchmark), sweeps, figures and results tables, and
PyTorch weights (convert, with the reference network it is checked against)."""
