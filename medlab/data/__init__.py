"""Sample data: phantoms with ground truth, samples shipped by installed packages, and a
checksummed remote registry."""
