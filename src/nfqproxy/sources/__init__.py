"""Sources of Service and EndpointSlice objects, as the Kubernetes API serves them."""
