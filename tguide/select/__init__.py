"""Model selection: candidates, ranking, guided fine-tuning and reports."""
