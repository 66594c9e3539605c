//! Service load balancing: Maglev tables, connection tracking, NAT.

pub mod maglev;
