"""The HTTP front door: OpenAI-compatible ingress, its protocol models, auth and limits."""
