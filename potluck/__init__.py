import os

# Trainers fork hivemind's DHT and averager processes after gRPC is loaded; gRPC's fork handlers
# must stay out of it (they cannot run while other threads are in gRPC, and the children never
# use gRPC). gRPC reads this when it is first imported, so it is set before anything imports it.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
