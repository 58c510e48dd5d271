//! Cluster mode: Lamport clocks, bully election and the coordinator-run lock (see issue 6).
