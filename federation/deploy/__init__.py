"""Real deployment on Flower's SuperLink and SuperNodes: certificates, node keys, a fast node
runner, run status, and a loopback federation for tests and benchmarks."""
