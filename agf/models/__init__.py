"""What the store learns: Artist Group Factors, the CNNs, the transfer classifier, evaluation."""
