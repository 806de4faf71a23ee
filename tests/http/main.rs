//! HTTP-level tests: real servers on 127.0.0.1:0, a real client, the layer in between.

mod api;
mod attacks;
mod charge_on;
mod config;
mod cost;
mod exempt;
mod hyper_server;
mod layer;
mod metrics;
mod per_client;
mod reload;
mod secrets;
mod support;
mod traces;
mod vast;
mod vmarea;
