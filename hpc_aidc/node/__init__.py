"""Code that runs inside an allocation, on the compute nodes."""
