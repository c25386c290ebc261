"""allfed: federated risk models and statistics for multi-site research cohorts."""
