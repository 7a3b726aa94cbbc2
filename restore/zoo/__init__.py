"""The embedded default model and the synthetic world it is trained and evaluated on."""
