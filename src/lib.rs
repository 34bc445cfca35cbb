pub mod quota;
pub mod route;
pub mod config;
