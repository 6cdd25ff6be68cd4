//! flashsale-operator: drives Kubernetes clusters through a flash sale window and restores them.
//!
//! Time is handled with `jiff` throughout (the same library k8s-openapi uses for Kubernetes
//! times); durations in the spec are Kubernetes' Go-style durations.

pub mod admin;
pub mod agent;
pub mod api;
pub mod boundaries;
pub mod cli;
pub mod client;
pub mod clusters;
pub mod controller;
pub mod installer;
pub mod levers;
pub mod metrics;
pub mod plan;
pub mod rehearsal;
pub mod rehearsal_cmd;
pub mod salvage;
pub mod status;
pub mod status_cmd;
pub mod timeline;
pub mod view;
