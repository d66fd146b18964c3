//! Property tests for the gateway's pure edges: request validation, task id
//! parsing, lenient reading of kie.ai's JSON, the kie code → gRPC status
//! mapping, and callback task ids and signatures (plus the callback route
//! driven through the real router).
//!
//! Each property re-states the rule independently of the code under test,
//! so a change of behaviour fails here and not only a crash. 256 cases per
//! property by default; `PROPTEST_CASES=10000 cargo test --test properties`
//! digs deeper.
//!
//! One file per edge: [`validation`] (requests and task ids), [`kie_json`]
//! (kie.ai's answers), [`error_mapping`] (kie.ai codes → gRPC status),
//! [`callbacks`] (task ids and signatures) and [`callback_route`] (the route
//! through the real router); [`json`] holds the JSON generators they share.

mod callback_route;
mod callbacks;
mod error_mapping;
mod json;
mod kie_json;
mod validation;
