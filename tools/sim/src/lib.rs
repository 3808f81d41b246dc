//! The deterministic whole-cluster simulator. Not built yet: the store's own fault simulation
//! lives in `store/tests/sim_faults.rs` until there is a cluster to simulate.
