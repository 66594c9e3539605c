//! Service load balancing: Maglev tables, connection tracking, NAT.

pub mod conntrack;
pub mod maglev;
