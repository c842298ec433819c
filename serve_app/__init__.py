"""Ray Serve application: OpenAI ingress, vLLM workers, placement and scaling glue."""
