"""Output-length prediction at the ingress."""
