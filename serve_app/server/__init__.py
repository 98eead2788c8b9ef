"""Ray Serve deployments and the thin HTTP layer over them."""
