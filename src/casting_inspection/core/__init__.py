"""What every room shares: one-line errors, atomic files, the typed view of params.yaml, the stage runner."""
