//! Reconciliation policy (filled in below).
