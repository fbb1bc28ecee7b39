//! DigitalOcean's API v2, as `launch`, `status` and `destroy` use it.

pub mod client;

pub use crate::net::RetryPolicy;
pub use client::{ApiError, Client, Sent, REQUESTS_PER_MINUTE};

/// Where the API lives unless `--api-url` or `DIGITALOCEAN_API_URL` say
/// otherwise (tests point it at Prism in front of a fake).
pub const DEFAULT_API_URL: &str = "https://api.digitalocean.com";
pub const API_URL_ENV: &str = "DIGITALOCEAN_API_URL";
/// The token variables doctl and Terraform users already have set.
pub const TOKEN_ENVS: &[&str] = &["DIGITALOCEAN_ACCESS_TOKEN", "DIGITALOCEAN_TOKEN"];
