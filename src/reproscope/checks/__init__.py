"""Checks that catch the bugs that wreck reproductions (overfit-one-batch, loss at init, ...)."""
