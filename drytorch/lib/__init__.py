"""Ready-made training pieces built on the kernel and the distributed layer."""
