pub use tollgate_core as core;
