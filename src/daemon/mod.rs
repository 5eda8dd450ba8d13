//! `ferry run`: the long-running process. `run` owns the store and the set
//! of link supervisors and applies reloads; `control` is the handle the
//! admin API shares with it; `admin` serves the admin API; `signals` turns
//! SIGTERM/SIGINT into shutdown and SIGHUP into a reload request.

pub mod admin;
pub mod control;
pub mod run;
pub mod signals;
