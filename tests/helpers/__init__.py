"""Helpers the test modules share: models, data files, fakes. No test module imports another."""
