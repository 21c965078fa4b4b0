//! `cauce server` end to end: the real binary on a loopback port.
