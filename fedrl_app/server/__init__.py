"""Server layer: the strategy registry, the run recorder, central evaluation and the metered grid."""
