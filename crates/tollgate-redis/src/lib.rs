//! Redis store for tollgate (work in progress).
