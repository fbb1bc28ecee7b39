//! The site on DigitalOcean: what it needs (`plan`), and the commands
//! that create it (`launch`), look at it (`status`) and remove it
//! (`destroy`). All of them find resources by the same names and tag.

pub mod destroy;
pub mod kinds;
pub mod launch;
pub mod plan;
pub mod status;

pub use plan::Plan;
