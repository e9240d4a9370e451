"""On-disk formats both sides share: written on the login node at submission and read inside the
allocation, or the other way round (the inference plan and its progress files, a model's source and
fingerprint, a sweep's trial files, the warning-grace record, an --entry reference). Neither scheduler/
nor node/ owns them, so neither imports the other."""
