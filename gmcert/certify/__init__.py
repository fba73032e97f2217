"""Certifiers: exact closed-form radii in latent space (linear and quadratic boundaries),
randomized smoothing in input space, and the method interface the pipeline runs them through
(`gmcert.certify.methods`)."""
