"""What the store learns: Artist Group Factors (estimators on arrays, and their store adapters),
the CNNs and the transfer classifier (training them, and serving them)."""
