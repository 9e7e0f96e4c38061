"""Generated gRPC stubs for potluck.v1."""
