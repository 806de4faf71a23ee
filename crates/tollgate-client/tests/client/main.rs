//! The client layer end to end: against real tollgate servers on 127.0.0.1 (real time), and
//! against scripted refusals on a paused tokio clock (the policies' formulas, hostile headers).

mod paused;
mod servers;
mod support;
