//! Disk image fixtures.
