"""The research loop: labels finished per fold, purged splits, preprocessing, models, tuning, comparison, runs."""
