"""Equal-budget tuning: every method of a comparison gets the same search, selected on a validation split."""
