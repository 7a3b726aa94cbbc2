"""Pipeline benchmarks (programs, not tests): Ray Data throughput vs a plain loop; Serve load on loopback."""
