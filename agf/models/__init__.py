"""What the store learns: Artist Group Factors (estimators on arrays, and their store adapters),
the CNNs and the transfer classifier (training them, and serving them)."""

import os

# PyTorch's OpenMP threads (GNU libgomp) spin for 300,000 rounds, milliseconds, after each
# parallel region before they sleep, holding a core that the fused pooling's threads
# (agf.models.fused) and the ingest workers then wait for. With 3,000 rounds, measured here:
# bfloat16 inference 10-15 % less CPU and up to 17 % faster; training 5 % less CPU and 3 % slower
# (means of six runs). libgomp reads it once, when torch is first imported; a setting of the
# user's own stands.
if not {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"} & os.environ.keys():
    os.environ["GOMP_SPINCOUNT"] = "3000"
