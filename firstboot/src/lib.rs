//! firstboot's library: everything but argument parsing, so tests reach it.

pub mod check;
